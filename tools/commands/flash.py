"""`roadside flash --board B [--port P] --image FILE`: flash one board with esptool."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import interrupted
from ..errors import ToolError
from ..install import boards, flashing
from ..install.flash_progress import ProgressView
from . import options

EXAMPLES = """examples:
  roadside flash --board esp32-devkitc-v4 --image ESP32_GENERIC-v1.24.1.bin
      the only attached USB serial board; prints MAC, chip, flash size, image sha256
  roadside flash --board roadside-water-level-r1 --port /dev/ttyUSB0 --image fw.bin --erase
  roadside flash --board esp32-s3-devkitc-1 --port socket://127.0.0.1:9876 --image fw.bin
  roadside flash --board boards/my-board.toml --image fw.bin --baud 460800 --json

errors and what to do:
  no serial data      hold BOOT while pressing EN, check the cable (data, not charge-only)
                      and the USB-UART driver
  port busy           the message names the process holding the port: close it
  permission denied   sudo usermod -aG dialout $USER, then log in again
  port does not exist run `roadside nodes` to list attached boards
  image/board/chip    the message says which chip the image, the board file and the
                      connected chip are: use matching ones"""


def add_common(p: argparse.ArgumentParser) -> None:
    """Options shared by `flash` and `fleet flash`."""
    p.add_argument("--board", required=True, metavar="B",
                   help="board name in boards/ (e.g. esp32-devkitc-v4) or a board .toml path")
    options.complete(p.add_argument(
        "--image", required=True, type=Path, metavar="FILE",
        help="firmware image (.bin, e.g. MicroPython's firmware.bin)"), options.FILE)
    p.add_argument("--erase", action="store_true", help="erase the whole flash first")
    options.add_baud(p, flashing.ROM_BAUD,
                     help="baud rate after connecting (default %(default)s; 460800 is faster)")
    p.add_argument("--role", choices=boards.ROLES,
                   help="role for the node id prefix (default: the board file's role)")
    p.add_argument("--connect-attempts", type=int, default=7, metavar="N",
                   help="connection attempts per board (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flash",
        help="flash a firmware image onto one board",
        description="Detect the chip, refuse an image or board of another chip, optionally "
                    "erase, write with progress, verify by digest, print MAC, chip, flash "
                    "size and image sha256.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    options.add_port(p, help="device path or pyserial URL (socket://HOST:PORT, "
                             "rfc2217://HOST:PORT), as PORT; default: the only attached USB "
                             "serial device")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    board = boards.load(args.board)
    image = flashing.read_image(args.image)
    flashing.check_image_for_board(image, board)
    port = flashing.resolve_port(options.port_of(args))
    with ProgressView([port]) as view, \
            interrupted.doing(f"connecting to {port}", "nothing was written: the board is "
                                                      "unchanged") as step:
        result = flashing.flash_board(
            port, board, image, erase=args.erase, baud=args.baud, role=args.role,
            connect_attempts=args.connect_attempts,
            progress=interrupted.flash_tracker(step, port, board.chip.flash_offset,
                                               view.callback(port)))
        view.finish(port, "failed" if result.result != "ok" else f"ok in {result.seconds:.1f} s")
    if result.result != "ok":
        raise ToolError(result.error)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(format_result(result))
    return 0


def format_result(r: flashing.FlashResult) -> str:
    """The human summary of one flashed board."""
    return "\n".join([
        f"port:         {r.port}",
        f"chip:         {r.chip}",
        f"MAC:          {r.mac}",
        f"flash size:   {r.flash_size}",
        f"node id:      {r.node_id}",
        f"image:        {r.image} at {r.offset}",
        f"image sha256: {r.image_sha256}",
        f"verified:     {'yes (flash MD5 matches the image)' if r.verified else 'no'}",
    ])
