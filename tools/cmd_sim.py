"""`roadside sim`: run simulated nodes on virtual cables until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
from pathlib import Path

from .errors import ToolError
from .gateway_config import link_sections
from .sim import DEFAULT_SCENARIO, ROLES, Simulation

EXAMPLES = """examples:
  roadside sim --role water --count 3 --scenario flood
  roadside sim --role signal --scenario conflict --speed 5
  roadside sim --role toll --count 2 --scenario peak
  roadside sim --count 1 --scenario scenarios/water/flood.json --speed 60 --run-dir /tmp/sim

It prints, per node, the pty the gateway should open, and [[link]] tables to paste into a
gateway.toml. Node flash, journals and logs live under --run-dir."""


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
