"""Flash a MicroPython image onto an ESP32-family board with esptool used as a library.

`flash_board` is the whole sequence for one board: check the image's chip against the board
file's, connect, detect the chip and refuse another one, load the stub, read MAC and flash
size, optionally erase, write (esptool compresses and checks the MD5 digest the stub
computes), verify the written region once more by digest, reset. Reading flash back is
not used: the digest is what the ROM/stub offers and all the check needs.

esptool's logger is a process-wide singleton; `flash_board` installs `_ThreadLogger`, which
hands each thread's esptool output to that thread's own `Progress` callback, so several
boards can be flashed in parallel threads (`fleet.py`).
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from roadside.gateway import roles

from ..errors import ToolError
from .boards import Board
from .chips import chip_for_image_id, chip_for_title

IMAGE_MAGIC = 0xE9
ROM_BAUD = 115200

#: progress(stage, done, total): stage is "connect", "erase", "write", "verify" or "done"
Progress = Callable[[str, int, int], None]


class FlashError(ToolError):
    """Flashing one board failed; the message says what to do."""


@dataclass(frozen=True)
class ImageInfo:
    """A firmware image file and what its header says."""

    path: Path
    data: bytes = field(repr=False)
    sha256: str
    md5: str
    chip_id: int
    chip_name: str          # "esp32", "esp32c3", ... or "chip id N" when unknown

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class FlashResult:
    """What one board reported, for the console, --json and the provisioning report."""

    port: str
    board: str
    result: str = "failed"          # "ok" or "failed"
    chip: str = ""                  # as esptool describes it: "ESP32-D0WDQ6 (revision v0.0)"
    mac: str = ""
    flash_size: str = ""
    image: str = ""
    image_sha256: str = ""
    offset: str = ""
    node_id: str = ""
    verified: bool = False
    error: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_image(path: Path) -> ImageInfo:
    """Read an ESP firmware image and the chip id from its extended header."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FlashError(f"image {path} does not exist") from None
    except OSError as exc:
        raise FlashError(f"image {path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) < 24 or data[0] != IMAGE_MAGIC:
        first = f"0x{data[0]:02X}" if data else "empty file"
        raise FlashError(f"image {path} is not an ESP firmware image (first byte {first}, "
                         f"expected 0x{IMAGE_MAGIC:02X}); use the .bin the build produced")
    chip_id = struct.unpack_from("<H", data, 12)[0]
    chip = chip_for_image_id(chip_id)
    chip_name = chip.name if chip else _esptool_chip_name(chip_id)
    damage = image_damage(data, chip_name)
    if damage:
        raise FlashError(f"image {path} is damaged: {damage}; nothing was written: build or "
                         "download the image again")
    return ImageInfo(Path(path), data, hashlib.sha256(data).hexdigest(),
                     hashlib.md5(data).hexdigest(), chip_id, chip_name)


# --- image integrity, as `esptool image-info` checks it ---------------------------------------

PARTITION_TABLE_AT = 0x8000       # where ESP-IDF (and so MicroPython) put the partition table
_PARTITION_MAGIC = b"\xaa\x50"
_APP_TYPE = 0x00


def image_damage(data: bytes, chip: str) -> str | None:
    """What is wrong with an ESP image's own integrity data, or None when it is whole.

    Parsed with esptool's image classes (`LoadFirmwareImage`) and checked as esptool's
    image-info does: every segment present, the XOR checksum, and the appended SHA-256
    digest when the header says there is one. A merged image (bootloader, partition table
    and app in one file, as MicroPython's ESP32 builds ship) is checked image by image: the
    bootloader at the start, then each app partition the table places inside the file, and
    the first app must be there at all (a cut file usually loses it). A chip esptool does
    not know is not checked here (the board check refuses it anyway).
    """
    from .chips import CHIPS

    if chip not in CHIPS:
        return None
    try:
        from esptool.bin_image import LoadFirmwareImage
    except ImportError:
        return None
    problem, end = _one_image_damage(LoadFirmwareImage, chip, data, 0)
    if problem:
        return problem
    offset = CHIPS[chip].flash_offset
    table = PARTITION_TABLE_AT - offset
    if table < end or data[table:table + 2] != _PARTITION_MAGIC:
        return None        # one image, not a merged one
    apps = _app_partitions(data[table:table + 0xC00])
    for n, app_at in enumerate(sorted(apps)):
        at = app_at - offset
        if at >= len(data):
            if n == 0:
                return (f"it is a merged image whose partition table puts the app at "
                        f"0x{app_at:x}, but the file ends at 0x{offset + len(data):x} "
                        f"({len(data)} bytes): the file is truncated")
            continue
        problem, _ = _one_image_damage(LoadFirmwareImage, chip, data[at:], app_at)
        if problem:
            return problem
    return None


def _one_image_damage(load: Callable[[str, bytes], Any], chip: str, data: bytes,
                      flash_at: int) -> tuple[str | None, int]:
    """(what is wrong with the image at the start of `data` or None, where it ends)."""
    where = "" if not flash_at else f"the app at 0x{flash_at:x}: "
    if not data or data[0] != IMAGE_MAGIC:
        first = f"0x{data[0]:02X}" if data else "nothing"
        return f"{where}no image header there (first byte {first})", 0
    try:
        image = load(chip, data)
    except Exception as exc:  # noqa: BLE001 - FatalError, struct.error, ... on a cut file
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if any(cut in reason for cut in ("unpack requires", "ord() expected", "End of file")):
            return (f"{where}the file ends inside the image ({len(data)} bytes; esptool: "
                    f"{reason}): the file is truncated"), 0
        return f"{where}esptool cannot parse it: {reason}", 0
    stored, computed = image.checksum, image.calculate_checksum()
    if stored != computed:
        return (f"{where}checksum 0x{stored:02x} stored, 0x{computed:02x} computed: its "
                "contents changed after it was built"), 0
    if getattr(image, "append_digest", False):
        if len(image.stored_digest) < 32:
            return (f"{where}the appended SHA-256 digest is cut off: the file is truncated "
                    f"({len(data)} bytes)"), 0
        if image.stored_digest != image.calc_digest:
            return f"{where}its appended SHA-256 digest does not match its contents", 0
        return None, image.data_length + 32
    end = 24 + sum(8 + len(seg.data) for seg in image.segments)
    return None, (end // 16 + 1) * 16      # the checksum byte ends a 16-byte block


def _app_partitions(table: bytes) -> list[int]:
    """Flash offsets of the app partitions in an ESP-IDF partition table."""
    apps = []
    for i in range(0, len(table) - 31, 32):
        entry = table[i:i + 32]
        if entry[:2] != _PARTITION_MAGIC:
            break
        ptype, _subtype, offset = struct.unpack_from("<BBI", entry, 2)
        if ptype == _APP_TYPE:
            apps.append(offset)
    return apps


def _esptool_chip_name(chip_id: int) -> str:
    """A chip id we have no facts for, named by esptool when it knows it."""
    try:
        from esptool.targets import CHIP_DEFS
    except ImportError:
        return f"chip id {chip_id}"
    for name, cls in CHIP_DEFS.items():
        if getattr(cls, "IMAGE_CHIP_ID", None) == chip_id and name != "esp8266":
            return name
    return f"chip id {chip_id}"


def check_image_for_board(image: ImageInfo, board: Board) -> None:
    """Refuse an image built for another chip than the board file's, saying which is which."""
    if board.chip.image_chip_id is None:
        raise FlashError(f"board {board.name} ({_show(board.path)}) is chip "
                         f"{board.chip.name!r}: nothing to flash; pick a hardware board")
    if image.chip_id != board.chip.image_chip_id:
        raise FlashError(
            f"image {image.path.name} is for {image.chip_name} (chip id {image.chip_id} in its "
            f"header) but board {board.name} is {board.chip.name} ({_show(board.path)}); use an "
            f"image built for {board.chip.name} or the board file for {image.chip_name}")


def _show(path: Path) -> str:
    """A path relative to the working directory when it is below it (boards/x.toml)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def node_id_for(board: Board, mac: bytes, role: str | None = None) -> str:
    """Node id from the MAC: role prefix + last 3 MAC bytes, e.g. 'wl-e29526'."""
    role = role or board.role
    prefix = roles.prefix(role) if role else "node"  # as sim/launcher.py names nodes
    return f"{prefix}-{mac[3]:02x}{mac[4]:02x}{mac[5]:02x}"


# --- ports ----------------------------------------------------------------------------------

def is_url(port: str) -> bool:
    """True for pyserial URLs (socket://, rfc2217://, loop://, ...) rather than device paths."""
    return "://" in port


def port_holders(device: str) -> list[tuple[int, str]]:
    """(pid, command name) of other processes with `device` open, from /proc/*/fd."""
    try:
        target = os.path.realpath(device)
    except OSError:
        return []
    me = os.getpid()
    from .serial_ports import holds_pty_master, pty_index

    pts = pty_index(device)  # on a pty, the process behind it (its master) is not a rival
    holders: list[tuple[int, str]] = []
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fds = os.scandir(f"/proc/{entry.name}/fd")
            for fd in fds:
                try:
                    if os.readlink(fd.path) == target and not (
                            pts is not None and holds_pty_master(int(entry.name), pts)):
                        comm = Path(f"/proc/{entry.name}/comm").read_text().strip()
                        holders.append((int(entry.name), comm))
                        break
                except OSError:
                    continue
        except OSError:
            continue
    return holders


def check_url(port: str) -> None:
    """A socket:// or rfc2217:// URL must name a host and a port number (pyserial's own
    error for a missing one reads like a busy port)."""
    scheme, _, rest = port.partition("://")
    if scheme not in ("socket", "rfc2217"):
        return
    hostport = rest.split("/", 1)[0].split("?", 1)[0]
    host, colon, number = hostport.rpartition(":")
    if not colon or not host or not number.isdigit() or not 0 < int(number) < 65536:
        raise FlashError(f"{port} has no port number: give {scheme}://HOST:PORT "
                         f"(e.g. {scheme}://127.0.0.1:9876)")


def check_serial_device(port: str) -> None:
    """Refuse a path that exists but is no serial port (/dev/null, a file, a disk): a
    terminal device is a character device in the kernel's tty class."""
    try:
        st = os.stat(port)
    except OSError:
        return
    what = None
    if not stat.S_ISCHR(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a device"
    else:   # Linux: /sys/dev/char/MAJOR:MINOR/subsystem is .../tty for every serial port
        sysfs = f"/sys/dev/char/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/subsystem"
        if os.path.exists(sysfs) and os.path.basename(os.path.realpath(sysfs)) != "tty":
            what = f"a {os.path.basename(os.path.realpath(sysfs))} device, not a terminal"
    if what:
        raise FlashError(f"{port} is not a serial port ({what}); give the board's port: "
                         "`roadside nodes` lists the attached ones")


def check_port(port: str) -> None:
    """Catch a missing, unreadable, busy or wrong port before esptool opens it."""
    if is_url(port):
        check_url(port)
        return
    if not os.path.exists(port):
        raise FlashError(f"port {port} does not exist; check the USB cable, then run "
                         "`roadside nodes` to list attached boards")
    check_serial_device(port)
    if not os.access(port, os.R_OK | os.W_OK):
        raise FlashError(_permission_message(port))
    holders = port_holders(port)
    gateway = gateway_holder(port, holders)
    if gateway:
        raise FlashError(gateway)
    if holders:
        who = ", ".join(f"pid {pid} ({name})" for pid, name in holders)
        raise FlashError(f"port {port} is busy: held open by {who}; close that program "
                         "(a serial monitor, the gateway, another flash) and retry")


def gateway_of(pid: int) -> tuple[bool, str | None]:
    """(is process `pid` a roadside gateway daemon, its --config when given), from its
    command line: `roadside gateway run --config F` or `python -m roadside.gateway.daemon`."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False, None
    config = None
    for i, arg in enumerate(argv[:-1]):
        if arg == "--config":
            config = argv[i + 1]
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
    if "roadside.gateway.daemon" in argv:
        return True, config
    for i, arg in enumerate(argv):
        if (os.path.basename(arg) == "roadside" or arg == "roadside.tools.cli") \
                and argv[i + 1:i + 3] == ["gateway", "run"]:
            return True, config
    return False, None


def gateway_holder(port: str, holders: list[tuple[int, str]] | None = None) -> str | None:
    """The message for a port a running roadside gateway holds (its link to the node), or
    None. The gateway does not lock its ports, so opening one beside it succeeds and the
    node's replies go to the gateway: a tool would only time out."""
    if is_url(port) or not os.path.exists(port):
        return None
    for pid, _name in port_holders(port) if holders is None else holders:
        is_gateway, config = gateway_of(pid)
        if is_gateway:
            cfg = f" --config {config}" if config else ""
            return (f"{port} is held by roadside gateway (pid {pid}): use `roadside gateway "
                    f"cmd{cfg} NODE config.get` (config.set key=K value=V to change one) to "
                    "reach the node through it, or stop the gateway first")
    return None


def _permission_message(port: str) -> str:
    group = "dialout"
    try:
        import grp

        group = grp.getgrgid(os.stat(port).st_gid).gr_name
    except (ImportError, KeyError, OSError):
        pass
    return (f"permission denied on {port} (owned by group {group}); add yourself to the "
            f"group: sudo usermod -aG {group} $USER, then log out and in again")


def _explain(port: str, exc: BaseException) -> FlashError:
    """esptool's multi-line FatalError / pyserial errors -> one line that says what to do."""
    text = " ".join(str(exc).split())
    low = text.lower()
    if "connection refused" in low:
        return FlashError(f"nothing is listening at {port} (connection refused); start the "
                          "serial server or check the address")
    if "permission denied" in low:
        return FlashError(_permission_message(port))
    if "errno 2" in low or "no such file" in low or "filenotfounderror" in low:
        return FlashError(f"port {port} does not exist; check the USB cable, then run "
                          "`roadside nodes` to list attached boards")
    if "errno 25" in low or "inappropriate ioctl" in low or "(25," in low:
        return FlashError(f"{port} is not a serial port (not a terminal device); give the "
                          "board's port: `roadside nodes` lists the attached ones")
    if "exclusively lock" in low or "errno 11" in low or "errno 16" in low or "busy" in low:
        holders = port_holders(port) if not is_url(port) else []
        who = (", ".join(f"pid {p} ({n})" for p, n in holders)) if holders else "another program"
        return FlashError(f"port {port} is busy: held open by {who}; close it and retry")
    if "no serial data" in low or "failed to connect" in low or "timed out waiting" in low:
        return FlashError(
            f"no serial data from the board on {port}: it is not in the ROM bootloader; hold "
            "BOOT while pressing EN (reset), release EN then BOOT, and retry; check the USB "
            "cable (a data cable, not charge-only) and the USB-UART driver (CP210x/CH34x)")
    first = text.split(". ")[0] if text else type(exc).__name__
    return FlashError(f"{port}: {first}")


# --- esptool output, per thread ---------------------------------------------------------------

_local = threading.local()
_install_lock = threading.Lock()
_installed = False


def _thread_logger_class() -> type:
    from esptool.logger import TemplateLogger

    class _ThreadLogger(TemplateLogger):
        """esptool output -> the calling thread's Progress callback and text log."""

        def _sink(self) -> Any:
            return getattr(_local, "sink", None)

        def print(self, *args: Any, **kwargs: Any) -> None:
            sink = self._sink()
            if sink is not None:
                sink.text(" ".join(str(a) for a in args))

        def note(self, message: str) -> None:
            self.print(f"note: {message}")

        def warning(self, message: str) -> None:
            self.print(f"warning: {message}")

        def error(self, message: str) -> None:
            self.print(f"error: {message}")

        def stage(self, finish: bool = False) -> None:
            pass

        def progress_bar(self, cur_iter: int, total_iters: int, prefix: str = "",
                         suffix: str = "", bar_length: int = 30) -> None:
            sink = self._sink()
            if sink is not None:
                sink.progress(cur_iter, total_iters)

        def set_verbosity(self, verbosity: str) -> None:
            pass

    return _ThreadLogger


class _Sink:
    def __init__(self, progress: Progress | None) -> None:
        self.stage = "connect"
        self.lines: list[str] = []
        self._progress = progress

    def text(self, line: str) -> None:
        if line.strip():
            self.lines.append(line.strip())
            del self.lines[:-50]

    def progress(self, done: int, total: int) -> None:
        self.report(self.stage, done, total)

    def report(self, stage: str, done: int, total: int) -> None:
        self.stage = stage
        if self._progress is not None:
            self._progress(stage, done, total)


class _NoHexDump:
    """Stands in for esptool.loader.HexFormatter while tracing is off (we never turn it on).

    esptool 5.6 builds its --trace hex dump of every packet written (`ESPLoader.write`) in an
    f-string *before* checking whether tracing is enabled: about 2 us of CPU per byte, 3 s
    for a 1.5 MiB image. With one thread per board under the GIL that CPU serialises a fleet
    flash; without it the host side of a write costs ~0.2 s.
    """

    def __init__(self, binary_string: bytes, auto_split: bool = True) -> None:
        self._n = len(binary_string)

    def __str__(self) -> str:
        return f"<{self._n} bytes>"


def _skip_trace_hexdumps() -> None:
    import esptool.loader

    if hasattr(esptool.loader, "HexFormatter"):
        esptool.loader.HexFormatter = _NoHexDump


@contextmanager
def _esptool_output(progress: Progress | None) -> Iterator[_Sink]:
    from esptool.logger import log

    global _installed
    with _install_lock:
        if not _installed:
            log.set_logger(_thread_logger_class()())
            _skip_trace_hexdumps()
            _installed = True
    sink = _Sink(progress)
    _local.sink = sink
    try:
        yield sink
    finally:
        _local.sink = None


# --- the sequence -----------------------------------------------------------------------------

def flash_board(port: str, board: Board, image: ImageInfo, *, erase: bool = False,
                baud: int = ROM_BAUD, role: str | None = None, connect_attempts: int = 7,
                progress: Progress | None = None) -> FlashResult:
    """Flash `image` onto the board at `port`; never raises for a board-side failure.

    The result's `result` is "ok" only when the written region's digest matched the image;
    otherwise `error` holds the one-line reason.
    """
    started = time.monotonic()
    res = FlashResult(port=port, board=board.name, image=str(image.path),
                      image_sha256=image.sha256, offset=f"0x{board.chip.flash_offset:x}")
    try:
        check_image_for_board(image, board)
        check_port(port)
        _require_esptool()
        with _esptool_output(progress) as sink:
            _flash(port, board, image, res, sink, erase=erase, baud=baud, role=role,
                   connect_attempts=connect_attempts)
        res.result = "ok"
    except FlashError as exc:
        res.error = str(exc)
    except Exception as exc:  # esptool FatalError, serial errors, OSError
        res.error = str(_explain(port, exc))
    res.seconds = round(time.monotonic() - started, 3)
    return res


def _require_esptool() -> None:
    try:
        import esptool  # noqa: F401
    except ImportError as exc:
        raise FlashError("esptool is not installed: pip install esptool==5.6.0") from exc


def _flash(port: str, board: Board, image: ImageInfo, res: FlashResult, sink: _Sink, *,
           erase: bool, baud: int, role: str | None, connect_attempts: int) -> None:
    from esptool import cmds

    sink.report("connect", 0, 1)
    esp = cmds.detect_chip(port, ROM_BAUD, "default-reset", connect_attempts=connect_attempts)
    try:
        connected = chip_for_title(esp.CHIP_NAME)
        if connected is None or connected.name != board.chip.name:
            name = connected.name if connected else esp.CHIP_NAME
            raise FlashError(
                f"the chip on {port} is {name} ({esp.CHIP_NAME}) but board {board.name} is "
                f"{board.chip.name} ({_show(board.path)}); connect a board with an "
                f"{board.chip.name}, or use the board file and image for {name}")
        res.chip = esp.get_chip_description()
        mac = bytes(esp.read_mac())
        res.mac = ":".join(f"{b:02x}" for b in mac)
        res.node_id = node_id_for(board, mac, role)
        esp = cmds.run_stub(esp)
        if baud != ROM_BAUD:
            esp.change_baud(baud)
        cmds.attach_flash(esp)
        res.flash_size = cmds.detect_flash_size(esp) or ""
        if erase:
            sink.report("erase", 0, 1)
            cmds.erase_flash(esp)
            sink.report("erase", 1, 1)
        sink.report("write", 0, image.size)
        cmds.write_flash(esp, [(board.chip.flash_offset, image.data)], flash_size="keep")
        sink.report("verify", 0, 1)
        digest = esp.flash_md5sum(board.chip.flash_offset, image.size)
        if digest != image.md5:
            raise FlashError(f"verify failed on {port}: flash MD5 {digest} != image MD5 "
                             f"{image.md5}; erase (--erase) and flash again, or replace the "
                             "board if it repeats")
        res.verified = True
        sink.report("verify", 1, 1)
        try:
            cmds.reset_chip(esp, "hard-reset")
        except Exception:  # a socket cannot reset: the flash is done anyway
            pass
        sink.report("done", 1, 1)
    finally:
        try:
            esp._port.close()
        except Exception:
            pass


def resolve_port(port: str | None) -> str:
    """`port`, or the only attached serial device when `port` is None."""
    if port:
        return port
    from .serial_ports import candidates

    found = candidates()
    if len(found) == 1:
        return found[0].device
    if not found:
        raise FlashError("no serial port found: connect the board by USB (a data cable), "
                         "check `roadside nodes`, or give --port")
    listed = ", ".join(f"{p.device} ({p.description})" for p in found)
    raise FlashError(f"{len(found)} serial ports attached, pick one with --port: {listed}")


__all__ = ["FlashError", "FlashResult", "ImageInfo", "check_image_for_board",
           "flash_board", "node_id_for", "read_image", "resolve_port"]
