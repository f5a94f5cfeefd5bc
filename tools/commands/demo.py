"""`roadside demo`: the whole chain on one machine, with a live view."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ToolError
from ..sim.demo import DemoOptions, run
from ..sim.launcher import ROLES

EXAMPLES = """examples:
  roadside demo                          a water, a signal and a toll node, until Ctrl-C
  roadside demo --nodes 2 --duration 10  2 water nodes, 10 s, drain, check every record once
  roadside demo --roles signal,toll --nodes 4 --signal-scenario conflict
                                         2 signal + 2 toll nodes (nodes go round the roles)
  roadside demo --fail-rate 0.3 --duration 20   the receiver refuses 30 % of batches
  roadside demo --uplink http://backend.example:8080/batches   your own backend
  roadside demo --ota --duration 120     an app update (one patch version up) rolled through
                                         the nodes, canary first, while they keep reporting

With --duration the exit status is 0 only when every record each node produced arrived
exactly once, in order; with --duration and --uplink the demo drains the gateway's queue
into that backend (bounded, 30 s), says how many records it handed over, and exits 0 only
when the queue emptied. With --duration and --ota the update must also have reached every
node. Logs, node flash, gateway.toml and the bundle stay in --run-dir."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run receiver + gateway + simulated nodes with a live view",
        description="Receiver, gateway and simulated nodes on virtual cables, with a live view.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nodes", type=int, default=None, metavar="N",
                   help="simulated nodes in all, distributed over --roles in turn (default: "
                        "one per role; --nodes without --roles: N water nodes)")
    p.add_argument("--roles", default=None, metavar="ROLE,...",
                   help="roles of the nodes: " + ", ".join(ROLES) + " (default: all)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after this long, drain and check delivery (default: until Ctrl-C)")
    p.add_argument("--uplink", default=None, metavar="URL",
                   help="deliver to this batch URL instead of a local receiver")
    p.add_argument("--run-dir", type=Path, default=None, metavar="DIR",
                   help="where logs, node flash and databases go (default: a new temp dir)")
    p.add_argument("--speed", type=float, default=10.0, metavar="X",
                   help="simulated seconds per real second (default 10)")
    p.add_argument("--scenario", default="flood", metavar="NAME|FILE",
                   help="water scenario (default flood)")
    p.add_argument("--signal-scenario", default="normal", metavar="NAME|FILE",
                   help="signal monitor scenario (default normal; conflict has a fault)")
    p.add_argument("--toll-scenario", default="peak", metavar="NAME|FILE",
                   help="toll beacon scenario (default peak)")
    p.add_argument("--rain-scenario", default="storm", metavar="NAME|FILE",
                   help="rain gauge scenario (default storm, timed to the water flood)")
    p.add_argument("--ota", action="store_true",
                   help="build the node app one patch version up and roll it through the nodes"
                        " (canary first) once they are up; with --duration it must reach"
                        " every node")
    p.add_argument("--fail-rate", type=float, default=0.0, metavar="FRACTION",
                   help="make the local receiver answer 503 to this fraction of batches")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if args.roles is None:
        roles = ("water",) if args.nodes is not None else ROLES
    else:
        roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
        bad = [r for r in roles if r not in ROLES]
        if bad or not roles:
            raise ToolError(f"--roles: bad value {args.roles!r}; allowed: a comma-separated "
                            f"list of {', '.join(ROLES)}")
    if args.nodes is None:
        args.nodes = len(roles)
    if not 1 <= args.nodes <= 32:
        raise ToolError(f"--nodes must be between 1 and 32, got {args.nodes}")
    if args.duration is not None and args.duration <= 0:
        raise ToolError(f"--duration must be positive, got {args.duration}")
    if args.uplink is not None and not args.uplink.startswith(("http://", "https://")):
        raise ToolError(f"--uplink must be an http(s) URL, got {args.uplink!r}")
    if not 0 <= args.fail_rate < 1:
        raise ToolError(f"--fail-rate must be in [0, 1), got {args.fail_rate}")
    return run(DemoOptions(nodes=args.nodes, roles=roles, duration=args.duration,
                           uplink=args.uplink,
                           scenarios={"signal": args.signal_scenario,
                                      "toll": args.toll_scenario,
                                      "rain": args.rain_scenario},
                           run_dir=args.run_dir, speed=args.speed, scenario=args.scenario,
                           fail_rate=args.fail_rate, ota=args.ota))
