"""`roadside receiver`: the reference backend (PROTOCOL.md section 3)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..addresses import parse_listen
from ..sim.cddl import PROTOCOL_CDDL
from ..sim.receiver import ReceiverOptions, run

EXAMPLES = """examples:
  roadside receiver --listen 127.0.0.1:8080 --db receiver.sqlite
  roadside receiver --listen 127.0.0.1:0 --db r.sqlite        (port 0: any free port, printed)
  roadside receiver --db r.sqlite --fail-rate 0.2 --fail-seed 7  (answer 503 to 20 % of POSTs)

POST /batches (application/cbor) stores a batch; GET /stats answers JSON totals."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "receiver",
        help="run the reference backend that stores uplink batches in SQLite",
        description="Reference backend: validates CBOR batches against docs/protocol.cddl and "
        "stores them idempotently in SQLite.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="address to serve on (default 127.0.0.1:8080)")
    p.add_argument("--db", default="receiver.sqlite", type=Path, metavar="FILE",
                   help="SQLite database file (created if missing; default receiver.sqlite)")
    p.add_argument("--fail-rate", type=float, default=0.0, metavar="FRACTION",
                   help="answer 503 to this fraction of POSTs, before storing (default 0)")
    p.add_argument("--fail-seed", type=int, default=None, metavar="N",
                   help="seed for --fail-rate, for repeatable runs")
    p.add_argument("--cddl", type=Path, default=PROTOCOL_CDDL, metavar="FILE",
                   help="CDDL schema with rule uplink-batch (default docs/protocol.cddl)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    host, port = parse_listen(args.listen)
    return run(ReceiverOptions(db=args.db, host=host, port=port, fail_rate=args.fail_rate,
                               fail_seed=args.fail_seed, cddl=args.cddl))
