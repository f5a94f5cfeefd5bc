"""`roadside gateway dead-letters list|replay|drop --config FILE [ID]`.

Dead letters are batches a backend refused with a non-retryable 4xx (PROTOCOL.md section 3);
the uplink moved them aside so they cannot block its cursor. `list` shows them, `replay` POSTs
one again, with its Idempotency-Key, to the uplink that refused it as configured now (so a
fixed URL or token applies) and removes it on a 2xx, `drop` deletes it for good. Safe while the
daemon runs (the queue is SQLite in WAL mode).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ToolError
from . import config_file

if TYPE_CHECKING:
    from roadside.gateway.config import GatewayConfig, UplinkConfig
    from roadside.gateway.queue import Queue


def add_parser(actions: argparse._SubParsersAction, epilog: str) -> None:
    """One parser per operation, so options and the ID go in any order: `replay --config F
    ID` (as the help shows it) and `--config F replay ID` alike."""
    text = "inspect, replay or drop batches a backend refused with a non-retryable 4xx"
    d = actions.add_parser("dead-letters", help=text, description=text, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", type=Path, metavar="FILE", help="gateway TOML config")
    d.add_argument("--config", type=Path, metavar="FILE", help="gateway TOML config",
                   dest="config_before")
    ops = d.add_subparsers(dest="op", metavar="OP", parser_class=type(d))
    ops.required = True
    for op, help_text in (("list", "the batches a backend refused"),
                          ("replay", "POST one again, with its Idempotency-Key"),
                          ("drop", "delete one for good")):
        o = ops.add_parser(op, parents=[config], help=help_text, description=help_text,
                           epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        if op != "list":
            o.add_argument("id", nargs="?", metavar="ID", help="the batch id")
        o.set_defaults(handler=handle, id=None)


def handle(args: argparse.Namespace) -> int:
    from roadside.gateway.queue import Queue

    args.config = args.config or args.config_before
    if args.config is None:
        raise ToolError(f"dead-letters {args.op}: give the gateway's --config FILE")
    config = config_file.load(args.config)
    if args.op != "list" and not args.id:
        raise ToolError(f"dead-letters {args.op}: give the batch ID (see: roadside gateway"
                        f" dead-letters list --config {args.config})")
    if not config.queue_path.exists():
        raise ToolError(f"{config.queue_path}: no queue yet (the daemon creates it); check"
                        f" gateway.data_dir in {args.config}")
    queue = Queue(config.queue_path, config.gateway.id, config.gateway.site)
    try:
        rows = queue.dead_letters()
        if args.op == "list":
            if not rows:
                print("no dead letters")
            for bid, uplink, created, failed, reason, size in rows:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(failed))
                print(f"{bid}  uplink={uplink}  failed={when}  created={created}"
                      f"  bytes={size}  reason={reason}")
            return 0
        matches = [r for r in rows if r[0] == args.id]
        if not matches:
            raise ToolError(f"dead letter {args.id!r} not found; see: roadside gateway"
                            f" dead-letters list --config {args.config}")
        if args.op == "drop":
            queue.drop_dead_letter(args.id)
            print(f"{args.id}: dropped")
            return 0
        return _replay(config, queue, matches)
    finally:
        queue.close()


def _replay(config: GatewayConfig, queue: Queue,
            matches: list[tuple[str, str, int, float, str, int]]) -> int:
    from roadside.gateway.errors import UplinkError
    from roadside.gateway.queue import Batch
    from roadside.gateway.uplinks.http import HttpUplink

    uplinks = {u.name: u for u in config.uplinks}
    status = 0
    for bid, uplink_name, created, *_ in matches:
        uc = uplinks.get(uplink_name)
        if uc is None or uc.type != "http":
            raise ToolError(f"{bid}: uplink {uplink_name!r} is not an http [[uplink]] in"
                            f" {config.path}; add it back or drop the dead letter")
        body = queue.dead_letter_body(bid, uplink_name)
        if body is None:  # dropped since it was listed (the daemon or another replay)
            print(f"{bid}: uplink {uplink_name}: no longer a dead letter")
            continue
        batch = Batch(bid, created, (), body)

        async def send(uc: UplinkConfig = uc, batch: Batch = batch) -> None:
            up = HttpUplink(uc, queue, [uc.name])
            try:
                await up.post(batch)
            finally:
                await up.close()

        try:
            asyncio.run(send())
        except UplinkError as exc:
            print(f"{bid}: uplink {uplink_name}: not delivered: {exc}; kept")
            status = 1
            continue
        queue.drop_dead_letter(bid, uplink_name)
        print(f"{bid}: uplink {uplink_name}: delivered; removed from the dead letters")
    return status
