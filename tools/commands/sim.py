"""`roadside sim`: run simulated nodes on virtual cables until Ctrl-C; `roadside sim board`
and `roadside sim rom`: a standalone virtual board / ROM bootloader for the install tools."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ToolError
from ..sim.gateway_toml import link_sections
from ..sim.launcher import DEFAULT_SCENARIO, ROLES, Simulation

if TYPE_CHECKING:
    from ..sim.virtual_board import VirtualBoard

# one MAC for both: a board flashed in the virtual ROM keeps its node id when deployed
DEFAULT_MAC = "24:0a:c4:00:00:01"
ROM_LIFETIME_S = 7 * 24 * 3600.0  # the mock server needs one; Ctrl-C is what stops it
BOOT_WAIT_S = 3.0  # at most, for a board to reach its REPL before its ports are printed

EXAMPLES = """examples:
  roadside sim --role water --count 3 --scenario flood
  roadside sim --role signal --scenario conflict --speed 5
  roadside sim --role toll --count 2 --scenario peak
  roadside sim --count 1 --scenario scenarios/water/flood.json --speed 60 --run-dir /tmp/sim

It prints, per node, the pty the gateway should open, and [[link]] tables to paste into a
gateway.toml. Node flash, journals and logs live under --run-dir.

standalone virtual counterparts of a board, for flash / deploy / config / monitor:
  roadside sim rom                  a virtual ESP32 ROM bootloader and a test image
  roadside sim board                a blank MicroPython board (REPL pty + data-link pty)
  roadside sim board --deploy water --board roadside-water-level-r1
                                    the same with the node firmware already deployed"""

BOARD_EXAMPLES = """examples:
  roadside sim board --dir ~/vboard
      prints "usb serial: /dev/pts/N" (the REPL: roadside deploy --port, mpremote connect)
      and "data link: /dev/pts/M" (the node's UART: roadside config/monitor, the gateway)
  roadside deploy --board roadside-water-level-r1 --role water --port /dev/pts/N \\
      --link-port /dev/pts/M
  roadside sim board --deploy water --board roadside-water-level-r1 --set node_id=wl-0042

The board's flash is DIR/flash.img (LittleFS2): a board started again on the same --dir
keeps what was deployed. Its console (everything it printed) is DIR/console.log."""

ROM_EXAMPLES = """examples:
  roadside sim rom
      prints "port: socket://127.0.0.1:PORT" and "image: FILE"; then
  roadside flash --board roadside-water-level-r1 --port socket://127.0.0.1:PORT --image FILE

The ROM is esp32-mock-bootloader (a dev dependency): chip detect, MAC, write, verify and
erase as esptool does them on a board in its bootloader. The image is a generated app image
for --chip (no MicroPython image ships with the tools: give a real one to roadside flash on
a real board)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sim", help="run simulated nodes (MicroPython unix port) on virtual serial cables",
        description="Run simulated nodes on virtual serial cables until Ctrl-C.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--role", default="water", choices=list(ROLES),
                   help="node role (default water)")
    p.add_argument("--count", type=int, default=1, metavar="N", help="number of nodes (default 1)")
    p.add_argument("--scenario", default=None, metavar="NAME|FILE",
                   help="scenario name under scenarios/ROLE/ or a JSON path (default: "
                        + ", ".join(f"{r} {n}" for r, n in DEFAULT_SCENARIO.items()) + ")")
    p.add_argument("--speed", type=float, default=1.0, metavar="X",
                   help="simulated seconds per real second (default 1)")
    p.add_argument("--seed", type=int, default=1, metavar="N", help="first node's seed")
    p.add_argument("--run-dir", type=Path, default=None, metavar="DIR",
                   help="where node flash and logs go (default: a new temporary directory)")
    p.set_defaults(handler=handle)
    what = p.add_subparsers(dest="counterpart", metavar="[board|rom]", parser_class=type(p))
    b = what.add_parser(
        "board", help="a standalone virtual MicroPython board on a pty, until Ctrl-C",
        description="A virtual MicroPython board (the unix port on a LittleFS2 flash image), "
                    "blank or with the node firmware deployed; prints its REPL port and the "
                    "gateway end of its data link, and runs until Ctrl-C.",
        epilog=BOARD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--dir", type=Path, default=None, metavar="DIR",
                   help="the board's directory: flash.img, console.log (default: a new "
                        "temporary directory)")
    b.add_argument("--mac", default=DEFAULT_MAC, help="its MAC / unique id (default %(default)s)")
    b.add_argument("--distance-mm", type=int, default=2500, metavar="MM",
                   help="what its ultrasonic sensor reads (default %(default)s)")
    b.add_argument("--deploy", choices=ROLES, metavar="ROLE", default=None,
                   help="deploy the node firmware for ROLE before printing the ports (as "
                        "roadside deploy does): " + ", ".join(ROLES))
    b.add_argument("--board", default="roadside-water-level-r1", metavar="B",
                   help="board file for --deploy (default %(default)s)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a node setting for --deploy (repeatable)")
    b.add_argument("--json", action="store_true",
                   help="print the ports as one JSON line (for scripts)")
    b.set_defaults(handler=handle_board)
    r = what.add_parser(
        "rom", help="a virtual ESP32 ROM bootloader and a test image, until Ctrl-C",
        description="A virtual ESP32 ROM bootloader on a loopback TCP port (what roadside "
                    "flash talks to on a board held in its bootloader) and a generated test "
                    "image for it; prints both and runs until Ctrl-C.",
        epilog=ROM_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--chip", default="esp32", choices=("esp32", "esp32s3", "esp32c3"),
                   help="the emulated chip (default %(default)s)")
    r.add_argument("--mac", default=DEFAULT_MAC, help="its MAC (default %(default)s)")
    r.add_argument("--dir", type=Path, default=None, metavar="DIR",
                   help="where the test image and the mock's state go (default: a new "
                        "temporary directory)")
    r.add_argument("--image-kib", type=int, default=256, metavar="K",
                   help="test image size in KiB (default %(default)s)")
    r.add_argument("--json", action="store_true",
                   help="print the port and image as one JSON line (for scripts)")
    r.set_defaults(handler=handle_rom)


def handle(args: argparse.Namespace) -> int:
    if not 1 <= args.count <= 64:
        raise ToolError(f"--count must be between 1 and 64, got {args.count}")
    if args.speed <= 0:
        raise ToolError(f"--speed must be positive, got {args.speed}")
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="roadside-sim-"))
    sim = Simulation.for_role(run_dir, args.role, args.count, args.scenario, args.speed,
                              args.seed)
    asyncio.run(_run(sim))
    return 0


async def _run(sim: Simulation) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sim.start()
        print(f"run directory: {sim.run_dir}")
        for node, path in sim.gateway_ports().items():
            print(f"{node}  gateway side: {path}  log: {sim.node(node).log}")
        print("\n# for gateway.toml:\n" + link_sections(list(sim.gateway_ports().values())))
        print("running; Ctrl-C stops the nodes", flush=True)
        await stop.wait()
    finally:
        await sim.stop()
        print("stopped", flush=True)


# -- standalone counterparts ------------------------------------------------------------------

def _until_stopped(alive: object = None) -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM; `alive()` False ends it too (its error)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_a: stop.set())
    try:
        while not stop.wait(0.5):
            if callable(alive):
                alive()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                          else signal.SIG_DFL)


def _term_is_ctrl_c() -> None:
    """Until _until_stopped: SIGTERM stops like Ctrl-C (the finally blocks close the board or
    the ROM) instead of killing this process and leaving the interpreter behind."""
    def interrupt(*_a: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _wait_booted(board: VirtualBoard, since: int) -> None:
    """Return once a blank board shows its REPL prompt, or after BOOT_WAIT_S (a board with
    firmware runs main.py and shows none). The unix port dies of a Ctrl-C that arrives just
    after its boot script ended and before its REPL took the terminal; mpremote and deploy
    send one when they connect, so the ports are printed when that moment has passed."""
    log = board.log
    deadline = time.monotonic() + BOOT_WAIT_S
    while time.monotonic() < deadline:
        if log.exists() and b">>> " in log.read_bytes()[since:]:
            return
        time.sleep(0.02)


def handle_board(args: argparse.Namespace) -> int:
    from ..install import boards, deploy
    from ..node import schema
    from ..sim.virtual_board import VirtualBoard

    _term_is_ctrl_c()
    settings = dict(schema.parse_assignment(s) for s in args.set)
    board_file = boards.load(args.board) if args.deploy else None
    for key, value in settings.items():
        schema.check(key, value)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="roadside-board-"))
    board = VirtualBoard(directory, mac=args.mac, distance_mm=args.distance_mm)
    board.dir.mkdir(parents=True, exist_ok=True)
    since = board.log.stat().st_size if board.log.exists() else 0
    board.start()
    try:
        _wait_booted(board, since)
        hello = None
        if board_file is not None:
            res = deploy.deploy(board_file, args.deploy, board.port, link_port=board.link_port,
                                settings=settings, progress=lambda line: _say(f"deploy  {line}"))
            hello = res.hello
        if args.json:
            print(json.dumps({"usb_serial": board.port, "data_link": board.link_port,
                              "dir": str(board.dir), "mac": args.mac, "hello": hello}),
                  flush=True)
        else:
            print(f"virtual board in {board.dir} (flash.img, console.log), MAC {args.mac}")
            if hello:
                print(f"node:        {hello.get('node')} ({hello.get('role')}, firmware "
                      f"{hello.get('fw')}) deployed and running")
            print(f"usb serial:  {board.port}    (the REPL: roadside deploy --port, "
                  "mpremote connect)")
            print(f"data link:   {board.link_port}    (the node's UART: roadside config, "
                  "roadside monitor --port, the gateway's [[link]])")
            print("running; Ctrl-C stops the board", flush=True)
        _until_stopped()
    finally:
        board.close()
    print("stopped", flush=True)
    return 0


def handle_rom(args: argparse.Namespace) -> int:
    from ..sim import virtual_rom

    _term_is_ctrl_c()
    if args.image_kib < 8:
        raise ToolError(f"--image-kib must be at least 8, got {args.image_kib}")
    directory = args.dir or Path(tempfile.mkdtemp(prefix="roadside-rom-"))
    directory.mkdir(parents=True, exist_ok=True)
    image = virtual_rom.build_test_image(args.chip, directory / f"{args.chip}-test-image.bin",
                                         args.image_kib * 1024)
    rom = virtual_rom.start(args.chip, args.mac, lifetime=ROM_LIFETIME_S,
                            state_dir=directory / "mock-state")

    def alive() -> None:
        if rom.proc.poll() is not None:
            raise ToolError(f"the virtual ROM stopped (exit {rom.proc.returncode}); start "
                            "roadside sim rom again")

    try:
        if args.json:
            print(json.dumps({"port": rom.url, "image": str(image), "chip": args.chip,
                              "mac": args.mac}), flush=True)
        else:
            print(f"virtual {args.chip} ROM bootloader, MAC {args.mac}")
            print(f"port:   {rom.url}")
            print(f"image:  {image}    (a generated {args.chip} test image, "
                  f"{image.stat().st_size} bytes)")
            print(f"flash:  roadside flash --board B --port {rom.url} --image {image}")
            print("running; Ctrl-C stops it", flush=True)
        _until_stopped(alive)
    finally:
        rom.stop()
    print("stopped", flush=True)
    return 0
