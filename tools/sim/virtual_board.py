"""A virtual MicroPython board: the unix port with a LittleFS2 filesystem, its REPL on a pty.

    board = VirtualBoard(Path("run/board")).start()
    board.port        # the board's "USB serial": mpremote connect <port> fs ls / exec / run
    board.link_port   # the other end of the node's data UART (the gateway's side)
    board.close()

Or by hand: `python -m roadside.tools.sim.virtual_board DIR` prints both paths and runs until
Ctrl-C.

What it is:

- `micropython -i firmware/vboard/boot.py ...` runs with its stdin/stdout/stderr on a pty
  that is its controlling terminal (raw, but with ISIG: a Ctrl-C that arrives while code runs
  interrupts it with KeyboardInterrupt, as on a board; while the REPL reads, the unix port
  turns ISIG off itself, so 0x03 reaches the raw REPL as a byte). A relay thread bridges that
  pty to the pty the user opens (`port`), so the path stays valid across interpreter restarts.
- firmware/vboard/boot.py mounts DIR/flash.img (a file-backed block device, LittleFS2, 4 KiB
  blocks, formatted on first start) as `/`, the host's filesystem at `/host`, with the mount
  code and block device the simulated nodes use (firmware/vboard/flash.py, blockdev.py), puts
  this board's `machine` and `esp32` modules (firmware/vboard/vmachine.py, vesp32.py) in
  sys.modules, and on a boot in friendly mode runs /boot.py and /main.py from the image, then
  the REPL (the unix port's: raw REPL and raw-paste included). Its files can be read from the
  host with tools/sim/vflash.py (`VFlash(board.image)`), as a simulated node's.
- Boot: until boot.py has mounted the image and installed `machine` (it then writes
  READY, which the relay takes out of the output), the relay holds what the user sends and
  gives it to the interpreter afterwards, as a board's UART is not read before its firmware
  is up. Otherwise a Ctrl-C sent right after a (re)start (mpremote's, deploy's raw REPL
  handshake) would interrupt boot.py itself, and `-i` would leave the user in a bare unix
  REPL whose `/` is the host's root filesystem and whose `machine` is the unix port's.
- Soft reset: Ctrl-D makes the unix REPL exit; the relay prints "MPY: soft reboot" and starts
  the interpreter again. After a soft reset in the raw REPL (what mpremote does) it comes back
  in the raw REPL without running main.py, as a board does; in the friendly REPL main.py runs.
  `machine.reset()` (exit status 3) restarts it like a hard reset.

The `machine` module of the board (the unix port has no UART, Pin, WDT or RTC) makes the
deployed firmware's ESP32 layer (firmware/roadside_node/hw/esp32.py) run unchanged:

- `UART(id)` where id is the node config's `hw.uart.link.id` is the data link: a second pty
  pair bridged like a virtual cable; the firmware opens the node end, `link_port` is the
  gateway end. (On a DevKitC the link is UART0, shared with the USB serial; the virtual board
  keeps the REPL and the link apart, as a board whose link is on UART1/2 does.)
- any other UART is an A02YYUW-style ultrasonic sensor reporting `distance_mm`;
- Pin, ADC (a constant reading), WDT (no-op), RTC memory (kept in DIR/rtc.bin),
  reset_cause (power_on on the first start, soft after a soft reset, the cause of a
  machine.reset / deepsleep otherwise), unique_id (from `mac`), reset (exit 3), deepsleep
  (sleep, exit 4).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import selectors
import signal
import subprocess
import sys
import termios
import threading
import time
import tty
from pathlib import Path
from typing import Any

from ..errors import LaunchError
from .launcher import FIRMWARE
from .micropython import micropython_binary
from .vflash import create_image, fs_blocks

BOOT = FIRMWARE / "vboard" / "boot.py"  # the board's boot; vmachine.py, vesp32.py beside it
DEFAULT_BLOCKS = fs_blocks("esp32-devkitc-v4")  # 2 MiB: a 4 MB ESP32's "vfs" partition
HEAPSIZE = "160k"  # ESP32 without PSRAM: ~110 KiB free to Python, plus room for the REPL
EXIT_SOFT = 0
EXIT_RESET = 3
EXIT_DEEPSLEEP = 4
SOFT_REBOOT = b"MPY: soft reboot\r\n"
HARD_RESET = b"\r\nets Jul 29 2019 12:21:46\r\n\r\nrst:0xc (SW_CPU_RESET),boot:0x13\r\n"
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"
# written by boot.py once the board is up (taken out of the output by the relay)
READY = b"\x00vboard:ready\x00"
HELD_MAX = 64 * 1024  # user bytes held during a boot (more is dropped, as by a full UART)

def _raw(fd: int, isig: bool = False) -> None:
    tty.setraw(fd)
    attr = termios.tcgetattr(fd)
    if isig:  # Ctrl-C while code runs -> SIGINT (KeyboardInterrupt); nothing else
        attr[3] |= termios.ISIG
        attr[6][termios.VQUIT] = 0
        attr[6][termios.VSUSP] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attr)


class _PtyPair:
    """A pty whose master we keep (and whose slave we hold open, so the master never EIOs)."""

    def __init__(self, isig: bool = False) -> None:
        self.master, self.slave = os.openpty()
        _raw(self.slave, isig)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


class VirtualBoard:
    """A MicroPython board emulated by the unix port; see the module docstring."""

    def __init__(self, directory: Path, *, blocks: int = DEFAULT_BLOCKS,
                 heapsize: str = HEAPSIZE, mac: str = "24:0a:c4:00:00:01",
                 distance_mm: int = 2500, boot_delay_ms: int = 0) -> None:
        self.dir = Path(directory).resolve()
        self.image = self.dir / "flash.img"
        self.blocks = blocks
        self.heapsize = heapsize
        self.mac = mac
        self.distance_mm = distance_mm
        self.boot_delay_ms = boot_delay_ms  # boot.py sleeps this long before mounting
        self.log = self.dir / "console.log"  # everything the board printed
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.soft_resets = 0
        self._usb = self._con = self._node = self._gw = None  # type: _PtyPair | None
        self._raw_mode = False
        self._swallow = False
        self._swallowed = b""
        self._ready = False  # boot.py has said READY since the last (re)start
        self._held_in = b""  # user -> board, held while booting
        self._held_out = b""  # board -> user while booting, scanned for READY
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._logf: Any = None

    @property
    def port(self) -> str:
        """The board's USB serial (the REPL)."""
        assert self._usb is not None, "start() first"
        return self._usb.path

    @property
    def link_port(self) -> str:
        """The gateway's end of the node's data UART."""
        assert self._gw is not None, "start() first"
        return self._gw.path

    def start(self) -> VirtualBoard:
        """Create the image (first start), the ptys, the relay thread; boot the interpreter."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.image.exists():
            create_image(self.image, self.blocks)  # erased flash; boot.py formats it
        self._usb, self._con = _PtyPair(), _PtyPair(isig=True)
        self._node, self._gw = _PtyPair(), _PtyPair()
        (self.dir / "board.json").write_text(json.dumps(
            {"mac": self.mac, "link": self._node.path, "distance_mm": self.distance_mm,
             "boot_delay_ms": self.boot_delay_ms}))
        self._logf = open(self.log, "ab")
        self._boot("friendly", "power_on")
        self._thread = threading.Thread(target=self._relay, name=f"vboard {self.dir.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def _boot(self, mode: str, cause: str) -> None:
        assert self._con is not None
        slave = self._con.slave
        _raw(slave, isig=True)  # a killed REPL leaves ISIG off: Ctrl-C would not interrupt

        def ctty() -> None:  # in the child, after setsid: the console is its terminal
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            self.proc = subprocess.Popen(
                [micropython_binary(), "-X", f"heapsize={self.heapsize}", "-i",
                 str(BOOT), str(self.image), str(self.blocks), mode, cause,
                 str(self.dir)],
                stdin=slave, stdout=slave, stderr=slave, cwd=self.dir,
                start_new_session=True, preexec_fn=ctty,
            )
        except OSError as exc:
            raise LaunchError(f"cannot start micropython: {exc}") from exc
        self.starts += 1
        self._ready = False
        if mode == "raw":
            self._swallow, self._swallowed = True, b""

    def _relay(self) -> None:
        assert self._usb and self._con and self._node and self._gw
        sel = selectors.DefaultSelector()
        pairs = {self._usb.master: self._con.master, self._con.master: self._usb.master,
                 self._node.master: self._gw.master, self._gw.master: self._node.master}
        for fd in pairs:
            sel.register(fd, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(0.02):
                fd = key.fd
                try:
                    data = os.read(fd, 4096)
                except (BlockingIOError, InterruptedError, OSError):
                    continue
                if not data:
                    continue
                if fd == self._usb.master:
                    self._track_mode(data)
                    if not self._ready:
                        self._held_in = (self._held_in + data)[:HELD_MAX]
                        continue
                elif fd == self._con.master:
                    data, up = self._until_ready(data)
                    self._logf.write(data)
                    self._logf.flush()
                    if self._swallow:
                        data = self._after_banner(data)
                    _write_all(pairs[fd], data)
                    if up and self._held_in:
                        held, self._held_in = self._held_in, b""
                        _write_all(self._con.master, held)
                    continue
                _write_all(pairs[fd], data)
            with self._lock:
                proc = self.proc
                if proc is not None and not self._stop.is_set() and proc.poll() is not None:
                    self._restart(proc.returncode)
        sel.close()

    def _track_mode(self, data: bytes) -> None:
        for b in data:
            if b == 1:
                self._raw_mode = True
            elif b == 2:
                self._raw_mode = False

    def _until_ready(self, data: bytes) -> tuple[bytes, bool]:
        """While booting, hold the output until READY; (output to pass on, READY seen now)."""
        if self._ready:
            return data, False
        self._held_out += data
        at = self._held_out.find(READY)
        if at < 0:
            return b"", False
        self._ready = True
        out = self._held_out[:at] + self._held_out[at + len(READY):]
        self._held_out = b""
        return out, True

    def _after_banner(self, data: bytes) -> bytes:
        """After a soft reset in raw mode: hide the unix banner, re-enter the raw REPL."""
        self._swallowed += data
        at = self._swallowed.find(b">>> ")
        if at < 0:
            return b""
        self._swallow = False
        rest = self._swallowed[at + 4:]
        self._swallowed = b""
        assert self._con is not None
        _write_all(self._con.master, b"\x01")
        return rest

    def _restart(self, status: int) -> None:
        assert self._usb is not None
        if self._held_out:  # it died while booting: show what it said
            self._logf.write(self._held_out)
            _write_all(self._usb.master, self._held_out)
            self._held_out = b""
        if status == EXIT_SOFT:
            self.soft_resets += 1
            _write_all(self._usb.master, SOFT_REBOOT)
            self._boot("raw" if self._raw_mode else "friendly", "soft")
        elif status == EXIT_DEEPSLEEP:
            self._raw_mode = False
            self._boot("friendly", "deepsleep")
        else:
            self._raw_mode = False
            if status != EXIT_RESET:
                _write_all(self._usb.master, f"\r\n[virtual board: micropython exited with "
                           f"status {status}]\r\n".encode())
            _write_all(self._usb.master, HARD_RESET)
            self._boot("friendly", "soft")

    def reset(self) -> None:
        """Press the reset button: kill the interpreter; the relay boots it again."""
        with self._lock:
            self._raw_mode = False
            self._ready = False  # hold what the user sends until the new boot is up
            if self.proc is not None and self.proc.poll() is None:
                _killpg(self.proc, signal.SIGKILL)
                self.proc.wait(5)

    def close(self) -> None:
        """Stop the interpreter and the relay, close every pty."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                _killpg(self.proc, signal.SIGKILL)
                self.proc.wait(5)
        for p in (self._usb, self._con, self._node, self._gw):
            if p is not None:
                p.close()
        if self._logf is not None:
            self._logf.close()
            self._logf = None

    def __enter__(self) -> VirtualBoard:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_all(fd: int, data: bytes, timeout: float = 2.0) -> None:
    end = time.monotonic() + timeout
    while data:
        try:
            n = os.write(fd, data)
            data = data[n:]
        except (BlockingIOError, InterruptedError):
            if time.monotonic() > end:
                return  # nobody reads: drop, like a UART with no listener
            time.sleep(0.001)
        except OSError:
            return


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str] | None = None) -> int:
    """`python -m roadside.tools.sim.virtual_board DIR`: run a virtual board until Ctrl-C."""
    ap = argparse.ArgumentParser(prog="virtual_board", description=__doc__.split("\n")[0])
    ap.add_argument("dir", type=Path, help="board directory (flash.img, console.log)")
    ap.add_argument("--mac", default="24:0a:c4:00:00:01")
    args = ap.parse_args(argv)
    board = VirtualBoard(args.dir, mac=args.mac).start()
    print(f"usb serial: {board.port}\ndata link:  {board.link_port}", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        board.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
