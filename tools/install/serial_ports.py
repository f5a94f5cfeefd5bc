"""Attached serial devices (pyserial's list_ports) with their USB identity.

`candidates()` is what `roadside flash` auto-detects from: USB serial devices only (a
board's USB-UART bridge or the chip's own USB-Serial/JTAG), not the machine's built-in
ttyS ports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# USB-UART bridges found on ESP32 boards, and Espressif's own USB-Serial/JTAG.
KNOWN_USB = {
    (0x10C4, 0xEA60): "Silicon Labs CP210x (ESP32-DevKitC)",
    (0x1A86, 0x7523): "WCH CH340",
    (0x1A86, 0x55D4): "WCH CH9102 (ESP32-DevKitC V4 newer lots)",
    (0x0403, 0x6001): "FTDI FT232R",
    (0x0403, 0x6010): "FTDI FT2232 (ESP-Prog)",
    (0x303A, 0x1001): "Espressif USB-Serial/JTAG (ESP32-S3/C3 native USB)",
    (0x303A, 0x4001): "Espressif USB CDC (TinyUSB)",
}


@dataclass(frozen=True)
class SerialDevice:
    """One serial device as `roadside nodes` shows it."""

    device: str
    vid_pid: str            # "10c4:ea60", or "" when not a USB device
    serial_number: str
    description: str
    manufacturer: str
    known_as: str           # what the VID:PID is on ESP32 boards, when we know it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_devices() -> list[SerialDevice]:
    """Every serial device pyserial sees, USB ones first, then by device path."""
    from serial.tools import list_ports

    out: list[SerialDevice] = []
    for p in list_ports.comports():
        usb = p.vid is not None and p.pid is not None
        out.append(SerialDevice(
            device=p.device,
            vid_pid=f"{p.vid:04x}:{p.pid:04x}" if usb else "",
            serial_number=p.serial_number or "",
            description=p.description if p.description and p.description != "n/a" else "",
            manufacturer=p.manufacturer or "",
            known_as=KNOWN_USB.get((p.vid, p.pid), "") if usb else "",
        ))
    return sorted(out, key=lambda d: (d.vid_pid == "", d.device))


def candidates() -> list[SerialDevice]:
    """USB serial devices: the ports a board can be on."""
    return [d for d in list_devices() if d.vid_pid]


# -- who holds a port -------------------------------------------------------------------------

def pty_index(device: str) -> int | None:
    """N for a pseudo-terminal slave /dev/pts/N (after symlinks), else None."""
    import os

    try:
        real = os.path.realpath(device)
    except OSError:
        return None
    head, _, tail = real.rpartition("/")
    return int(tail) if head == "/dev/pts" and tail.isdigit() else None


def holds_pty_master(pid: int, index: int) -> bool:
    """True when process `pid` has the master side of /dev/pts/`index` open.

    That process is the device behind the pty (a virtual board, a ROM emulator, socat, a
    terminal emulator): it holds the slave too only to keep the master from EIO-ing, as a
    USB-UART bridge is always "open" on the board's side. It does not compete with a program
    that opens the port; a second program holding only the slave (a shell, a serial monitor,
    the gateway) does. Linux reports a master's pty number as `tty-index` in fdinfo.
    """
    import os

    try:
        fds = list(os.scandir(f"/proc/{pid}/fd"))
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd.path) not in ("/dev/ptmx", "/dev/pts/ptmx"):
                continue
            with open(f"/proc/{pid}/fdinfo/{fd.name}") as f:
                for line in f:
                    if line.startswith("tty-index:") and int(line.split()[1]) == index:
                        return True
        except (OSError, ValueError, IndexError):
            continue
    return False
