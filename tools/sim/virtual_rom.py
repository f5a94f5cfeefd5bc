"""A virtual ESP32 ROM bootloader on a loopback TCP port, and a generated test image.

For tests and benchmarks of `roadside flash` without hardware. The server is the PyPI
package `esp32-mock-bootloader` (a dev dependency) run in its own process; this module starts
it on a free port (the OS picks it, the server writes it to a file), with the emulated chip
and a MAC of our choosing (the mock derives the MAC from the chip name, so several boards of
one chip would share it), and stops it. The image is built with esptool's image classes, so
its header carries the chip id that `roadside flash` checks.

Run as `python -m roadside.tools.sim.virtual_rom --chip esp32 --mac 24:0a:c4:00:00:01
--port-file F`; from a shell, `roadside sim rom` starts one with a test image and prints both
(tools/commands/sim.py).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import LaunchError


@dataclass
class VirtualRom:
    """One running virtual ROM bootloader."""

    chip: str
    mac: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Terminate the server process (kill after 2 s) and reap it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=2)


def start(chip: str = "esp32", mac: str | None = None, *, lifetime: float = 60.0,
          state_dir: Path | None = None, startup_timeout: float = 10.0,
          fast_slip: bool = True) -> VirtualRom:
    """Start a virtual ROM for `chip` on a free loopback port; it exits after `lifetime` s.

    `fast_slip` replaces the mock's byte-by-byte SLIP decoder (see `fast_slip_decode`).
    """
    mac = mac or "24:0a:c4:" + ":".join(f"{b:02x}" for b in random.randbytes(3))
    fd, name = tempfile.mkstemp(prefix="roadside-rom-port-")
    os.close(fd)
    port_file = Path(name)
    port_file.unlink()
    env = dict(os.environ)
    # The mock keeps a registry of running servers; keep ours out of the shared one.
    env["ESP32_MOCK_BOOTLOADER_STATE_DIR"] = str(state_dir or tempfile.mkdtemp(prefix="rom-"))
    cmd = [sys.executable, "-m", "roadside.tools.sim.virtual_rom", "--chip", chip, "--mac", mac,
           "--port-file", str(port_file), "--lifetime", str(lifetime)]
    if not fast_slip:
        cmd.append("--stock-slip")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + startup_timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise LaunchError(f"virtual ROM ({chip}) exited at start: "
                                  f"{err.strip().splitlines()[-1:] or proc.returncode}")
            if port_file.is_file():
                text = port_file.read_text().strip()
                if text:
                    return VirtualRom(chip, mac, int(text), proc)
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        raise LaunchError(f"virtual ROM ({chip}) did not start within {startup_timeout} s")
    finally:
        port_file.unlink(missing_ok=True)


def build_test_image(chip: str, path: Path, size: int = 64 * 1024, seed: int = 1) -> Path:
    """Write an app image for `chip` (esptool's image classes) of about `size` bytes.

    The data segment is pseudo-random so it does not compress to nothing: writing it takes
    a time that grows with `size`, as a real MicroPython image's does.
    """
    from esptool.bin_image import (
        ELFSection,
        ESP32C3FirmwareImage,
        ESP32FirmwareImage,
        ESP32S3FirmwareImage,
    )

    classes = {"esp32": (ESP32FirmwareImage, 0x3FFB0000, 0x40080000),
               "esp32s3": (ESP32S3FirmwareImage, 0x3FC88000, 0x40378000),
               "esp32c3": (ESP32C3FirmwareImage, 0x3FC80000, 0x40380000)}
    cls, dram, iram = classes[chip]
    image = cls()
    image.entrypoint = iram
    payload = random.Random(seed).randbytes(max(size - 4096, 1024))
    image.segments = [ELFSection(b".dram0.data", dram, payload, 0),
                      ELFSection(b".iram0.text", iram, b"\x00" * 4096, 0)]
    image.save(str(path))
    return Path(path)


def fast_slip_decode(raw: bytes) -> list[bytes]:
    """The SLIP frames in `raw`, as esp32_mock_bootloader.server.slip_decode_frames returns them.

    Same result for everything esptool sends (bytes before the first END and after the last
    are not frames; empty frames are skipped; ESC+ESC_END -> END, ESC+ESC_DD -> ESC, ESC+x
    -> x), but with bytes.split and re.sub instead of a Python loop per byte. The mock runs
    its decoder over the whole receive buffer on every chunk, about 2 s of CPU for a 1.5 MiB
    image; a real board does that work on its own CPU, so a benchmark of several virtual
    boards on one machine would otherwise mostly measure the emulator.
    """
    parts = raw.split(b"\xc0")
    return [_UNESCAPE.sub(_unescape_one, part) for part in parts[1:-1] if part]


_UNESCAPE = re.compile(rb"\xdb(.?)", re.DOTALL)
_UNESCAPED = {b"\xdc": b"\xc0", b"\xdd": b"\xdb"}


def _unescape_one(m: re.Match[bytes]) -> bytes:
    return _UNESCAPED.get(m.group(1), m.group(1))


def _serve(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m roadside.tools.sim.virtual_rom")
    p.add_argument("--chip", default="esp32")
    p.add_argument("--mac", required=True, help="aa:bb:cc:dd:ee:ff")
    p.add_argument("--port-file", required=True)
    p.add_argument("--lifetime", type=float, default=60.0)
    p.add_argument("--stock-slip", action="store_true",
                   help="keep the mock's own (slow) SLIP decoder")
    args = p.parse_args(argv)
    mac = tuple(int(b, 16) for b in args.mac.split(":"))
    from esp32_mock_bootloader import registers, server

    registers.mac_bytes_for_chip = lambda _chip: mac
    if not args.stock_slip:
        server.slip_decode_frames = fast_slip_decode
    server.run_server(0, args.lifetime, args.chip, "127.0.0.1", port_file=args.port_file)
    return 0


if __name__ == "__main__":
    sys.exit(_serve())
