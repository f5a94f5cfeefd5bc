"""Find a USB-UART by its serial number or VID:PID instead of a /dev/ttyUSBn path.

`/dev/ttyUSB0` is whatever enumerated first: after a replug, a reboot or a second adapter it
may be another device or `/dev/ttyUSB1`. A `[[link]]` with `usb_serial = "..."` and/or
`vid_pid = "10c4:ea60"` is resolved with pyserial's `serial.tools.list_ports` on every
(re)connect attempt, so the link follows its adapter wherever the kernel puts it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from serial.tools import list_ports
from serial.tools.list_ports_common import ListPortInfo

VID_PID = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$")


@dataclass(frozen=True)
class UsbMatch:
    """What a [[link]] asks for: a serial number, a VID:PID, or both (all must match)."""

    usb_serial: str | None = None
    vid_pid: str | None = None

    @property
    def name(self) -> str:
        """The link's stable name in /status, /metrics and logs."""
        parts = []
        if self.vid_pid:
            parts.append(self.vid_pid.lower())
        if self.usb_serial:
            parts.append(f"serial={self.usb_serial}")
        return "usb:" + ",".join(parts)

    def matches(self, port: ListPortInfo) -> bool:
        if self.usb_serial is not None and port.serial_number != self.usb_serial:
            return False
        if self.vid_pid is not None:
            if port.vid is None or port.pid is None:
                return False
            if f"{port.vid:04x}:{port.pid:04x}" != self.vid_pid.lower():
                return False
        return True

    def resolve(self) -> tuple[str | None, str | None]:
        """(device path, None) when exactly one port matches, else (None, why not)."""
        found = sorted((p for p in list_ports.comports() if self.matches(p)),
                       key=lambda p: p.device)
        if len(found) == 1:
            return found[0].device, None
        if not found:
            return None, f"no USB serial port matches {self.name}"
        devices = ", ".join(p.device for p in found)
        return None, (f"{len(found)} USB serial ports match {self.name} ({devices}):"
                      f" add usb_serial to tell them apart")


def describe_ports() -> list[str]:
    """One line per serial port present, for error messages and `roadside nodes`."""
    out = []
    for p in sorted(list_ports.comports(), key=lambda p: p.device):
        ident = f"{p.vid:04x}:{p.pid:04x}" if p.vid is not None and p.pid is not None else "-"
        out.append(f"{p.device} vid_pid={ident} usb_serial={p.serial_number or '-'}"
                   f" {p.description or ''}".rstrip())
    return out
