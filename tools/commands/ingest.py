"""`roadside ingest`: uplink batches into PostgreSQL, for a city's operation centre."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from ..addresses import parse_listen
from ..errors import ToolError
from ..ingest.http import read_tokens
from ..ingest.mqtt import DEFAULT_TOPIC, MqttOptions
from ..ingest.service import IngestOptions, run

EXAMPLES = """examples:
  roadside ingest --db postgresql://ingest@db.example/roadside --listen 0.0.0.0:8080
  roadside ingest --db postgresql:///roadside --init-db      (create the schema and exit)
  roadside ingest --db postgresql:///roadside --mqtt mqtt://broker:1883 --group city
  ROADSIDE_INGEST_DB=postgresql://... roadside ingest        (keep the password off argv)
  roadside ingest --db postgresql:///roadside --tokens /etc/roadside/ingest.tokens
                                        (POST /batches only with one of these bearer tokens:
                                         the gateways' uplink token_file)

POST /batches (application/cbor) stores a batch, as `roadside receiver` does; GET /healthz
answers "ok" while the database answers; GET /stats this process's counters. Run any number
of processes behind a load balancer: they share nothing but the database. The schema is
created on start when missing (docs/CITY_SCALE.md)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="store uplink batches in PostgreSQL (stateless; run several behind a balancer)",
        description="The city's ingest side: accepts the gateways' uplink batches over HTTP "
        "(and MQTT with --mqtt) and writes them into PostgreSQL exactly once by (node, seq) "
        "and by Idempotency-Key.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", default=os.environ.get("ROADSIDE_INGEST_DB"), metavar="URL",
                   help="PostgreSQL URL, postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
                        " (default: $ROADSIDE_INGEST_DB)")
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="address to serve HTTP on (default 127.0.0.1:8080; port 0: any free"
                        " port, printed)")
    p.add_argument("--init-db", action="store_true",
                   help="create the tables, indexes and views, then exit")
    p.add_argument("--pool", type=int, default=4, metavar="N",
                   help="connections to PostgreSQL, i.e. batches written at once (default 4)")
    p.add_argument("--tokens", type=Path, metavar="FILE",
                   help="accept POST /batches only with a bearer token listed in FILE (one a"
                        " line; the gateways' uplink token_file); default: any sender")
    p.add_argument("--mqtt", metavar="URL",
                   help="also take batches from this broker (mqtt://HOST:PORT) as a member of"
                        " --group")
    p.add_argument("--group", metavar="NAME",
                   help="shared-subscription group of the ingest processes ($share/NAME/...)")
    p.add_argument("--topic", default=DEFAULT_TOPIC, metavar="FILTER",
                   help=f"topic filter of the uplinks' batches (default {DEFAULT_TOPIC})")
    p.add_argument("--client-id", metavar="ID",
                   help="MQTT client id, stable across restarts so the session's unacknowledged"
                        " messages come back (default roadside-ingest-GROUP-HOSTNAME-PORT)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if not args.db:
        raise ToolError("--db is required: a PostgreSQL URL such as"
                        " postgresql://ingest@localhost/roadside (or set ROADSIDE_INGEST_DB)")
    if not args.db.startswith(("postgresql://", "postgres://")):
        raise ToolError(f"--db {args.db!r}: expected a URL starting with postgresql://")
    if args.pool < 1:
        raise ToolError(f"--pool must be at least 1, got {args.pool}")
    host, port = parse_listen(args.listen)
    tokens = None
    if args.tokens is not None:
        try:
            tokens = read_tokens(args.tokens)
        except ValueError as exc:
            raise ToolError(str(exc)) from None
    mqtt = None
    if args.mqtt or args.group:
        if not (args.mqtt and args.group):
            raise ToolError("--mqtt and --group go together: the broker's URL and the"
                            " subscriber group's name")
        mqtt = MqttOptions(url=args.mqtt, group=args.group, topic=args.topic,
                           client_id=args.client_id
                           or f"roadside-ingest-{args.group}-{socket.gethostname()}-{port}")
    return run(IngestOptions(db=args.db, host=host, port=port, mqtt=mqtt, pool=args.pool,
                             init_only=args.init_db, tokens=tokens))
