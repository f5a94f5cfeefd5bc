"""`roadside scan`: the roadside nodes in BLE range, from their advertisements (no connection,
no secret needed): node id, role, status (alarm, battery, safe mode, unprovisioned), RSSI."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from roadside.gateway.links.ble import NodeAdvert

from ..node import ble_transport

EXAMPLES = """examples:
  roadside scan                     nodes in range, strongest signal first
  roadside scan --timeout 10 --json
  roadside scan --site binh-duong   only this site's nodes (and unassigned ones)
  roadside config get --ble wl-0042 then read (or set) one node's config over BLE

RSSI is in dBm: above -70 is good, below -90 the link will drop. A node shown as
"no secret" refuses BLE sessions until its secret is set over the serial cable."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scan", help="list roadside nodes in Bluetooth LE range",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, default=4.0, metavar="S",
                   help="listen this long (default 4 s)")
    p.add_argument("--site", metavar="SITE", help="only nodes of this site")
    p.add_argument("--json", action="store_true", help="print a JSON list on stdout")
    p.set_defaults(handler=handle)


def status_text(a: NodeAdvert) -> str:
    d = a.as_dict()
    parts = ["ALARM" if d["alarm"] else "ok"]
    if d["battery_pct"] is not None:
        parts.append(f"battery {d['battery_pct']}%")
    if d["safe_mode"]:
        parts.append("safe mode")
    if not d["provisioned"]:
        parts.append("no secret")
    return ", ".join(parts)


def render(nodes: list[NodeAdvert], as_json: bool, out: Callable[[str], None] = print) -> None:
    if as_json:
        out(json.dumps([a.as_dict() for a in nodes], indent=2))
        return
    if not nodes:
        out("no roadside nodes heard; are they powered, in range, with BLE on (config ble)?")
        return
    for a in nodes:
        out(f"{a.node:<12} {a.role:<7} {a.rssi:>4} dBm  {a.address}  {status_text(a)}")


def handle(args: argparse.Namespace) -> int:
    nodes = ble_transport.scan_sync(args.timeout, site=args.site)
    render(nodes, args.json)
    return 0
