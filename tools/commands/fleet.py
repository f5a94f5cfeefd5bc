"""`roadside fleet flash --board B --image FILE [--ports P ... | --all] [--report DIR]`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .. import interrupted
from ..errors import ToolError
from ..install import boards, flashing, fleet
from ..install.flash_progress import ProgressView
from ..install.serial_ports import candidates
from . import options
from .flash import add_common

EXAMPLES = """examples:
  roadside fleet flash --board roadside-water-level-r1 --image fw.bin --all
      every attached USB serial board at once; report in ./provisioning/
  roadside fleet flash --board esp32-devkitc-v4 --image fw.bin \\
      --ports /dev/ttyUSB0 /dev/ttyUSB1 /dev/ttyUSB2 --report reports/ --erase
  roadside fleet flash --board esp32-devkitc-v4 --image fw.bin \\
      --ports socket://127.0.0.1:9001 socket://127.0.0.1:9002 --json

The report (CSV and JSON) has one row per board: port, MAC, chip, flash size, image sha256,
node id (role prefix + last 3 MAC bytes), result, error, seconds. One failed board does not
stop the others; the exit status is 0 only when every board succeeded (1 otherwise)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fleet",
        help="work on several boards at once (fleet flash)",
        description="Several boards at once.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True
    f = actions.add_parser(
        "flash",
        help="flash several boards in parallel and write a provisioning report",
        description="Flash several boards in parallel: a progress line per board, a "
                    "provisioning report as CSV and JSON.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(f)
    which = f.add_mutually_exclusive_group(required=True)
    options.complete(which.add_argument(
        "--ports", nargs="+", metavar="P",
        help="device paths or pyserial URLs (socket://, rfc2217://)"), options.PORTS)
    which.add_argument("--all", action="store_true",
                       help="every attached USB serial device (see `roadside nodes`)")
    options.complete(f.add_argument(
        "--report", type=Path, default=Path("provisioning"), metavar="DIR",
        help="directory for the report files (default: %(default)s)"), options.DIRECTORY)
    f.set_defaults(handler=handle_flash)


def handle_flash(args: argparse.Namespace) -> int:
    board = boards.load(args.board)
    image = flashing.read_image(args.image)
    flashing.check_image_for_board(image, board)
    if args.all:
        ports = [d.device for d in candidates()]
        if not ports:
            raise ToolError("--all: no USB serial device attached; check the cables and "
                            "`roadside nodes`")
    else:
        ports = list(dict.fromkeys(args.ports))
    finished: list[str] = []
    leaves = ("the boards not finished have a partial image or none, and no report was "
              "written: run the same fleet flash again")
    started = time.monotonic()
    with ProgressView(ports) as view, \
            interrupted.doing(f"flashing {len(ports)} boards", leaves) as step:

        def done(r: flashing.FlashResult) -> None:
            view.finish(r.port, f"ok {r.node_id} {r.mac} {r.seconds:.1f} s" if r.result == "ok"
                        else f"FAILED: {r.error}")
            if r.result == "ok":
                finished.append(r.port)
                step.update(leaves=f"{', '.join(finished)} flashed and verified; {leaves}")

        results = fleet.flash_fleet(ports, board, image, erase=args.erase, baud=args.baud,
                                    role=args.role, connect_attempts=args.connect_attempts,
                                    progress=view.callback, on_done=done)
    elapsed = time.monotonic() - started
    stem = time.strftime("flash-%Y%m%d-%H%M%S")
    csv_path, json_path = fleet.write_report(results, args.report, stem)
    ok = sum(r.result == "ok" for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "failed": len(results) - ok, "seconds": round(elapsed, 3),
                          "report_csv": str(csv_path), "report_json": str(json_path),
                          "boards": [r.as_dict() for r in results]}, indent=2))
    else:
        for r in results:
            status = "ok    " if r.result == "ok" else "FAILED"
            print(f"{status} {r.port}  {r.node_id or '-'}  {r.mac or '-'}  {r.chip or '-'}  "
                  f"{r.flash_size or '-'}  {r.seconds:.1f} s{'  ' + r.error if r.error else ''}")
        print(f"{ok}/{len(results)} boards flashed in {elapsed:.1f} s; image sha256 "
              f"{image.sha256}; report: {csv_path}, {json_path}")
    return 0 if ok == len(results) else 1
