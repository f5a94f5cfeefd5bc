"""`roadside nodes`: attached serial devices and their USB identity."""

from __future__ import annotations

import argparse
import json

from ..install.serial_ports import list_devices

EXAMPLES = """examples:
  roadside nodes              USB serial devices first: path, VID:PID, serial, description
  roadside nodes --json       the same as a JSON list
  roadside nodes --all        include built-in serial ports without a USB identity
  roadside nodes --names      the device paths only (shell completion of --port uses it)

A board that does not show up: try another cable (many are charge-only) and check that the
USB-UART driver is loaded (dmesg | tail shows cp210x / ch341 / ftdi_sio attaching)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nodes",
        help="list attached serial devices with their USB ids",
        description="Attached serial devices with what they are: device path, USB VID:PID, "
                    "serial number, description.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--all", action="store_true",
                   help="also list serial ports without a USB identity (ttyS*)")
    p.add_argument("--json", action="store_true", help="print a JSON list on stdout")
    p.add_argument("--names", action="store_true",
                   help="only the device paths, one a line (what shell completion offers "
                        "for --port)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    devices = [d for d in list_devices() if args.all or d.vid_pid]
    if args.names:
        for d in devices:
            print(d.device)
        return 0
    if args.json:
        print(json.dumps([d.as_dict() for d in devices], indent=2))
        return 0
    if not devices:
        print("no USB serial devices attached (roadside nodes --all lists the others)")
        return 0
    width = max(len(d.device) for d in devices)
    for d in devices:
        what = d.known_as or d.description or d.manufacturer or "-"
        print(f"{d.device:<{width}}  {d.vid_pid or '-':<9}  {d.serial_number or '-':<16}  {what}")
    return 0
