"""`roadside gateway accept --config FILE PORT NODE`: take a node id a port refused.

A serial port that has served one node refuses a HELLO with another id (a device on the cable
claiming to be another node) and the gateway raises an identity alarm (/status "identity",
/metrics roadside_gateway_identity_alarms). When the device really was replaced, the operator
accepts the new id on that port; its next HELLO (the node retries every second or so) is
taken. The same accepts, once, a node whose seq jumped further than a journal can hold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ToolError
from . import api

EXIT_OK = 0


def add_parser(actions: argparse._SubParsersAction, epilog: str) -> None:
    a = actions.add_parser(
        "accept", help="accept a node id on a port that refused it (identity alarm)",
        description="Accept NODE on PORT in the running gateway: the next HELLO of NODE"
                    " there is taken. See the refused ones in /status (\"identity\").",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--config", required=True, type=Path, metavar="FILE",
                   help="gateway TOML config (for the [status] listen address)")
    a.add_argument("port", metavar="PORT", help="the link's port, e.g. /dev/ttyUSB0")
    a.add_argument("node", metavar="NODE", help="the node id to accept there, e.g. wl-0003")
    a.set_defaults(handler=handle_accept)


def handle_accept(args: argparse.Namespace) -> int:
    url = f"{api.base_url(args.config)}/links/accept"
    status, doc = api.request(url, {"port": args.port, "node": args.node}, 10,
                                       api.token(args.config))
    if status != 200:
        message = doc.get("error", doc) if isinstance(doc, dict) else doc
        raise ToolError(f"{message} (HTTP {status})")
    print(doc["accepted"], file=sys.stdout)
    return EXIT_OK
