"""`roadside fleet-sim --db URL`: a fleet of gateways and light nodes into `roadside ingest`."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from ..errors import ToolError

EXAMPLES = """examples:
  roadside fleet-sim --db postgresql:///fleet                     3 gateways x 5 nodes, 30 s
  roadside fleet-sim --db postgresql:///fleet --gateways 10 --nodes 20 --faults --partition 20

N gateway daemons, each with M light simulated nodes on ptys, deliver to K `roadside ingest`
processes writing into the (empty) database; at the end every record the nodes made must be
one row (exit 0), else exit 1. --faults kills an ingest process and a gateway (kill -9) and
restarts them; --partition S cuts gateway 0 from the backend for S seconds and times its
backlog's drain. bench/bench_fleet.py adds a PostgreSQL restart and the figures."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fleet-sim",
        help="simulate a fleet of gateways and nodes delivering to roadside ingest",
        description="A fleet on one machine: gateway daemons with light simulated nodes, "
        "roadside ingest processes and your PostgreSQL; counts lost and duplicated records.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", required=True, metavar="URL",
                   help="an empty PostgreSQL database, postgresql://USER@HOST[:PORT]/DATABASE")
    p.add_argument("--gateways", type=int, default=3, metavar="N")
    p.add_argument("--nodes", type=int, default=5, metavar="M", help="nodes per gateway")
    p.add_argument("--ingests", type=int, default=2, metavar="K",
                   help="roadside ingest processes (gateway g posts to ingest g %% K)")
    p.add_argument("--period", type=float, default=1.0, metavar="S",
                   help="seconds between a node's records (default 1)")
    p.add_argument("--duration", type=float, default=30.0, metavar="S",
                   help="seconds the nodes report before the drain (default 30)")
    p.add_argument("--faults", action="store_true",
                   help="kill -9 an ingest process and a gateway, and restart them")
    p.add_argument("--partition", type=float, default=0.0, metavar="S",
                   help="cut gateway 0 from the backend for S seconds, then heal it")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    for name in ("gateways", "nodes", "ingests"):
        if getattr(args, name) < 1:
            raise ToolError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.period <= 0 or args.duration <= 0 or args.partition < 0:
        raise ToolError("--period and --duration must be above 0, --partition not below 0")
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    from ..ingest.store import Store, redact
    from ..sim.fleet import Fleet, FleetOptions, fleet_rows

    store = await Store.open(args.db, size=1)      # creates the schema; says why it cannot
    try:
        async with store.pool.connection() as conn:
            row = await (await conn.execute("SELECT count(*) FROM records")).fetchone()
    finally:
        await store.close()
    if row and row[0]:
        raise ToolError(f"{redact(args.db)} already holds {row[0]} records: fleet-sim counts"
                        " the rows against what its nodes made; give it an empty database"
                        " (createdb fleet)")
    with tempfile.TemporaryDirectory(prefix="roadside-fleet-") as tmp:
        fleet = Fleet(FleetOptions(db_url=args.db, run_dir=Path(tmp), gateways=args.gateways,
                                   nodes=args.nodes, ingests=args.ingests, period=args.period))
        try:
            await fleet.start(partitionable=0 if args.partition else None)
            third = args.duration / 3
            await asyncio.sleep(third)
            if args.faults:
                await fleet.kill_ingest(down_s=min(2.0, third))
                if args.gateways > 1:
                    await fleet.kill_gateway(down_s=min(2.0, third), spare=0)
            if args.partition:
                await fleet.partition(0, args.partition, drain_timeout=600)
            await asyncio.sleep(third)
            await fleet.drain(timeout=600)
            rows, stored = await asyncio.to_thread(fleet_rows, args.db)
            c = fleet.count(rows, stored)
        finally:
            await fleet.stop()
    ok = c.lost == 0 and c.extra == 0 and c.rows == c.stored_by_batches
    print(f"made {c.made}, rows {c.rows}, lost {c.lost}, duplicated {c.extra}; node -> row"
          f" p50 {c.quantile(0.5):.2f} s, p99 {c.quantile(0.99):.2f} s")
    print("OK: 0 lost, 0 duplicated" if ok else "FAILED: records lost or duplicated")
    return 0 if ok else 1
