"""`roadside monitor [--port P | --ble NODE] [--raw] [--json]`: a node's frames, decoded, as
they arrive, from its serial data port or over an authenticated Bluetooth LE session.

Read-only: it sends nothing (no ACK, no TIME), so a node it watches keeps its journal. A node
sends RECORDS only once a gateway has answered its HELLO; `--session` answers each HELLO with
TIME (never an ACK), so a node on the bench streams its journal while keeping every record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from roadside.gateway import protocol as p

from .. import interrupted
from ..errors import ToolError
from ..install import flashing
from ..node import ble_transport
from ..node.link import BAUDRATE, Frame, NodeLink, hello_dict, open_link
from . import options

EXAMPLES = """examples:
  roadside monitor                          the only attached board's frames, decoded
  roadside monitor /dev/ttyUSB0 --raw      (or -p /dev/ttyUSB0, --port /dev/ttyUSB0)
      the bytes as hex too (line noise, framing problems)
  roadside monitor --port /dev/ttyUSB0 --json | jq 'select(.kind == "alarm")'
  roadside monitor --port /dev/ttyUSB0 --duration 60 --count 10
  roadside monitor --port /dev/ttyUSB0 --session
      a node with no gateway: answer its HELLO with TIME so it sends its records
  roadside monitor --ble wl-0042 --session
      the same over Bluetooth LE, authenticated with ~/.config/roadside/secrets/wl-0042.key
      (--secret-file FILE for another key file)

Alarms (alarm, fault, transaction, and every PRIORITY record) are marked with "!!" (red on a
terminal). Frames that fail COBS or CRC are counted, and the counters are printed when the
counts change and at the end. It never sends anything: a node keeps its journal while you
watch (records are not acked). A node sends records only to a gateway that answered its HELLO;
without a gateway, --session answers HELLO with TIME (never an ACK): the node then sends its
journal (and again every 2 s, as nothing is acked) and keeps every record.

Over BLE (--ble NODE) the node is found by its advertisement (`roadside scan`) and the
session authenticated with its secret; the node then talks to this session instead of a
gateway's (it takes one connection at a time), says HELLO and sends records only with
--session. The frames shown are the unsealed messages; --raw shows them re-framed."""

RED = "\x1b[1;31m"
RESET = "\x1b[0m"


def register(sub: argparse._SubParsersAction) -> None:
    p_ = sub.add_parser(
        "monitor",
        help="watch a node's frames, decoded, live (read-only)",
        description="Print a node's frames as they arrive: hello, records with kind and "
                    "field names, alarms highlighted, errors, bad-frame counters; --raw adds "
                    "the bytes in hex. Sends nothing (over BLE: only the "
                    "authentication).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p_.add_mutually_exclusive_group()
    options.add_port(p_, where, help="the node's data port (device or URL), as PORT; "
                                     "default: the only attached USB serial device")
    ble_transport.add_arguments(p_, where)
    options.add_baud(p_, BAUDRATE)
    p_.add_argument("--raw", action="store_true", help="also print the bytes read, in hex")
    p_.add_argument("--json", action="store_true", help="one JSON object per line")
    p_.add_argument("--session", action="store_true",
                    help="answer HELLO with TIME (never ACK) so the node sends its records")
    p_.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p_.add_argument("--count", type=int, metavar="N", help="stop after N frames")
    p_.set_defaults(handler=handle)


def describe(frame: Frame, node: str | None) -> list[dict[str, Any]]:
    """One frame as JSON-friendly events (a RECORDS message gives one event per record)."""
    ts = frame.t
    m = frame.message
    base: dict[str, Any] = {"t": round(ts, 3)}
    if m is None:
        return [{**base, "type": "UNDECODABLE", "error": frame.error,
                 "hex": frame.payload.hex()}]
    name = p.TYPE_NAMES.get(m.TYPE, str(m.TYPE))
    if isinstance(m, p.Hello):
        return [{**base, "type": name, **hello_dict(m)}]
    if isinstance(m, p.Records):
        out = []
        for r in m.records:
            kind = p.kind_name(r.kind)
            alarm = r.priority or r.kind in (p.KIND_ALARM, p.KIND_FAULT)
            out.append({**base, "type": name, "node": node, "seq": r.seq, "record_t": r.t,
                        "kind": kind, "priority": r.priority, "synced": r.synced,
                        "alarm": alarm, "data": p.body_to_data(r.kind, r.body)})
        return out
    if isinstance(m, p.Reply):
        return [{**base, "type": name, "request_id": m.request_id, "ok": m.ok,
                 "result": m.result, "error": m.error}]
    if isinstance(m, p.Error):
        return [{**base, "type": name, "code": m.code, "message": m.message,
                 "ref_type": m.ref_type}]
    return [{**base, "type": name, "raw": {str(k): v for k, v in m.raw.items()}}]


def format_event(e: dict[str, Any], color: bool = False) -> str:
    """One human line for an event from describe()."""
    clock = time.strftime("%H:%M:%S", time.localtime(e["t"])) + f".{int(e['t'] * 1000) % 1000:03d}"
    t = e["type"]
    if t == "HELLO":
        text = (f"HELLO    {e['node']} {e['role']} fw {e['fw']} board {e['board']} boot "
                f"{e['boot_count']} ({e['reset_cause']}) next_seq {e['next_seq']} "
                f"first_unacked {e['first_unacked']}" + (" SAFE MODE" if e.get("safe_mode")
                                                         else ""))
    elif t == "RECORDS":
        fields = " ".join(f"{k}={v}" for k, v in e["data"].items())
        mark = "!! " if e["alarm"] else "   "
        text = f"RECORD {mark}{e['node'] or '?'} #{e['seq']} {e['kind']:<11} {fields}"
        if e["alarm"] and color:
            text = RED + text + RESET
    elif t == "REPLY":
        text = (f"REPLY    {e['request_id']} ok {e['result']!r}" if e["ok"]
                else f"REPLY    {e['request_id']} refused: {e['error']}")
    elif t == "ERROR":
        text = f"ERROR    code {e['code']}: {e['message']}"
    elif t == "UNDECODABLE":
        text = f"BAD      {e['error']}"
    else:
        text = f"{t:<8} {e.get('raw')}"
    return f"{clock}  {text}"


def run(link: NodeLink, out: Callable[[str], None], *, raw: bool = False, as_json: bool = False,
        duration: float | None = None, count: int | None = None,
        color: bool = False, session: bool = False) -> dict[str, int]:
    """Print frames until duration/count (or Ctrl-C); returns the decoder's counters."""
    node: str | None = None
    seen = 0
    bad_shown = 0
    if raw:
        link.raw_chunks = []
    end = None if duration is None else time.monotonic() + duration
    try:
        while end is None or time.monotonic() < end:
            frames = link.read_frames(0.1)
            if raw and link.raw_chunks:
                for t, chunk in link.raw_chunks:
                    if as_json:
                        out(json.dumps({"t": round(t, 3), "type": "BYTES", "hex": chunk.hex()}))
                    else:
                        out(f"{time.strftime('%H:%M:%S', time.localtime(t))}  BYTES    "
                            f"{chunk.hex(' ')}")
                link.raw_chunks.clear()
            for frame in frames:
                if isinstance(frame.message, p.Hello):
                    node = frame.message.node
                    if session:  # TIME makes the session "up"; no ACK: the node keeps all
                        link.send(p.Time(int(time.time() * 1000)))
                for e in describe(frame, node):
                    out(json.dumps(e, default=str) if as_json else format_event(e, color))
                seen += 1
            c = link.decoder.counters()
            bad = c["crc"] + c["cobs"] + c["oversize"]
            if bad != bad_shown:
                bad_shown = bad
                msg = (f"bad frames: crc {c['crc']}, cobs {c['cobs']}, oversize "
                       f"{c['oversize']}")
                out(json.dumps({"t": round(time.time(), 3), "type": "COUNTERS", **c})
                    if as_json else f"{time.strftime('%H:%M:%S')}  {msg}")
            if count is not None and seen >= count:
                break
    except KeyboardInterrupt:
        return {**link.decoder.counters(), "undecodable": link.undecodable, "interrupted": 1}
    return {**link.decoder.counters(), "undecodable": link.undecodable}


def handle(args: argparse.Namespace) -> int:
    given = options.port_of(args)
    if args.ble and given:
        raise ToolError(f"give PORT ({given}) or --ble {args.ble}, not both")
    port = f"ble:{args.ble}" if args.ble else flashing.resolve_port(given)

    def out(line: str) -> None:
        print(line, flush=True)

    if not args.json and args.ble:
        sys.stderr.write(f"looking for {args.ble} over BLE (up to {args.ble_timeout:g} s)\n")
    # Ctrl-C at any point (cli.main says what it stopped and exits 130): the node is unchanged
    with interrupted.doing(f"monitoring {port}",
                           "the node is as it was: nothing was acked, it keeps its journal"
                           if args.session else "the node is as it was: nothing was sent"):
        link = open_link(port, args.ble, args.secret_file, args.ble_timeout,
                         baudrate=args.baud)
        if not args.json:
            mode = "answering HELLO with TIME" if args.session else "read-only"
            sys.stderr.write(f"monitoring {port} ({mode}; Ctrl-C to stop)\n")
        with link:
            c = run(link, out, raw=args.raw, as_json=args.json, duration=args.duration,
                    count=args.count, color=sys.stdout.isatty(), session=args.session)
        summary = (f"frames {c['frames']}, bad: crc {c['crc']}, cobs {c['cobs']}, oversize "
                   f"{c['oversize']}, undecodable {c['undecodable']}")
        stopped = c.pop("interrupted", 0)
        if args.json:
            print(json.dumps({"type": "SUMMARY", **c}), flush=True)
        else:
            sys.stderr.write(summary + "\n")
        if stopped:   # the counters first, then cli.main's line
            raise KeyboardInterrupt
    return 0
