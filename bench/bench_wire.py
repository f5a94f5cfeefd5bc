#!/usr/bin/env python3
"""Wire benchmark: bytes per reading on the serial link and in the uplink batch.

    .venv/bin/python bench/bench_wire.py [--json]

The same water-level readings travel three ways, all measured in this run:
- on the serial link: COBS+CRC frames of RECORDS messages as a node sends them (one reading
  per message, and as many as fit one 1024-byte payload), built with gateway.protocol;
- in the uplink batch: the CBOR batch the gateway's real Queue cuts (docs/PROTOCOL.md §3);
- the same batch gzipped (the HTTP uplink's `gzip = true`);
- as ThingsBoard-style JSON, the baseline: the gateway telemetry API's
  `{"DEVICE": [{"ts": MS, "values": {...}}]}`, one reading per message and batched per device.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
from pathlib import Path

from roadside.gateway import protocol as p
from roadside.gateway.queue import Queue

T0 = 1_795_420_800
NODES = 10
READINGS = 2_000          # per node


def readings(node: int, rng: random.Random) -> list[list]:
    """Level records like a water node's: [seq, t, kind, flags, body] with realistic values."""
    out, level = [], 80.0 + 40.0 * rng.random()
    for i in range(READINGS):
        level += rng.uniform(-0.4, 0.5)
        out.append([i + 1, T0 + 10 * i, p.KIND_LEVEL, 0,
                    {1: round(level, 1), 2: round(rng.uniform(-1, 1), 2),
                     3: int(3000 - 10 * level)}])
    return out


def frame_bytes(records: list[list], from_seq: int) -> int:
    return len(p.encode_frame({0: p.RECORDS, 1: from_seq, 2: records}))


def serial_per_reading(recs: list[list], per_message: int | None) -> float:
    """Frame bytes per reading with `per_message` records a message (None: as many as fit)."""
    total, i = 0, 0
    while i < len(recs):
        n = per_message or 1
        if per_message is None:   # grow the message while it fits MAX_PAYLOAD
            while i + n < len(recs) and len(p.encode_message(
                    {0: p.RECORDS, 1: recs[i][0], 2: recs[i:i + n + 1]})) <= p.MAX_PAYLOAD:
                n += 1
        total += frame_bytes(recs[i:i + n], recs[i][0])
        i += n
    return total / len(recs)


def uplink_per_reading(all_recs: dict[str, list[list]], max_records: int,
                       gzipped: bool = False) -> float:
    """Bytes of the real batches the gateway's Queue cuts, per record (gzip as the HTTP
    uplink's `gzip = true` sends them)."""
    with tempfile.TemporaryDirectory() as tmp:
        q = Queue(Path(tmp) / "queue.sqlite", "gw-bench", "site-bench")
        try:
            for node, recs in all_recs.items():
                msg = p.decode_message(p.encode_message({0: p.RECORDS, 1: 1, 2: recs}))
                q.store(node, "water", msg.records, 1, T0)
            total = count = 0
            while (batch := q.next_batch(max_records, 16 * 1024 * 1024, T0)) is not None:
                total += len(gzip.compress(batch.body, mtime=0) if gzipped else batch.body)
                count += len(batch)
                q.batch_delivered(batch.id)
        finally:
            q.close()
    return total / count


def thingsboard_per_reading(all_recs: dict[str, list[list]], batched: bool) -> float:
    names = p.BODY_NAMES[p.KIND_LEVEL]
    total = count = 0
    for node, recs in all_recs.items():
        entries = [{"ts": r[1] * 1000, "values": {names[k]: v for k, v in r[4].items()}}
                   for r in recs]
        if batched:
            total += len(json.dumps({node: entries}, separators=(",", ":")))
        else:
            total += sum(len(json.dumps({node: [e]}, separators=(",", ":"))) for e in entries)
        count += len(recs)
    return total / count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    rng = random.Random(1)
    all_recs = {f"wl-{i:04d}": readings(i, rng) for i in range(1, NODES + 1)}
    flat = [r for recs in all_recs.values() for r in recs]
    figures = {
        "serial, 1 reading per frame": serial_per_reading(flat[:500], 1),
        "serial, full 1024-byte frames": serial_per_reading(all_recs["wl-0001"], None),
        "uplink CBOR batch of 200": uplink_per_reading(all_recs, 200),
        "uplink CBOR batch of 1000": uplink_per_reading(all_recs, 1000),
        "uplink CBOR batch of 200, gzip": uplink_per_reading(all_recs, 200, gzipped=True),
        "ThingsBoard JSON, 1 reading per message": thingsboard_per_reading(all_recs, False),
        "ThingsBoard JSON, batched per device": thingsboard_per_reading(all_recs, True),
    }
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    base = figures["ThingsBoard JSON, batched per device"]
    print(f"{NODES} nodes x {READINGS} level readings")
    print(f"{'path':42} {'bytes/reading':>14} {'vs TB JSON batched':>19}")
    for name, value in figures.items():
        print(f"{name:42} {value:14.1f} {value / base:18.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
