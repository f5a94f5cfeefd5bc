#!/usr/bin/env python3
"""The queue's CPU per record, by call: store (RECORDS payloads decoded, validated and stored
in a group commit, records encoded once), next_batch (cut) and batch_delivered (delete), in
process, no links, no event loop.

    .venv/bin/python bench/bench_queue_calls.py                 # 10 nodes, 28 records/message

`store` is Queue.store_messages (decoding on the writer thread, issue 13 item 2); on a queue
without it (an older tree run with this script) it is protocol.decode_message of each payload
plus Queue.store_many, the same work split between the loop and the writer.
CPU time (time.process_time) per record stored; the fsync waits are not counted. Steadier than
bench_ingest.py's wall-clock figures on a shared machine, so two versions of the queue can be
compared on the same run (docs/PERFORMANCE.md, issue 13).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from roadside.gateway import protocol
from roadside.gateway.queue import Queue

try:
    from roadside.gateway.queue import Incoming
except ImportError:                  # an older queue: decoding is the session's
    Incoming = None


def run(nodes: int, per_msg: int, messages: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        q = Queue(Path(tmp) / "q.sqlite")
        spent = {"store": 0.0, "next_batch": 0.0, "batch_delivered": 0.0}
        seqs = {f"wl-{i:04d}": 0 for i in range(nodes)}
        total = 0
        for _ in range(messages):
            group = []
            for node, last in seqs.items():
                records = [[s, 1_700_000_000 + s, 1, 0, {1: 10.5, 2: 0.5, 3: 900 + s}]
                           for s in range(last + 1, last + 1 + per_msg)]
                seqs[node] = last + per_msg
                group.append((node, protocol.encode_message(
                    {0: protocol.RECORDS, 1: last + 1, 2: records})))
            t = time.process_time()
            if Incoming is not None:
                q.store_messages([Incoming(node, "water", payload, None, time.time())
                                  for node, payload in group])
            else:
                decoded = [(node, protocol.decode_message(payload)) for node, payload in group]
                q.store_many([(node, "water", msg.records, msg.from_seq, None)
                              for node, msg in decoded])
            spent["store"] += time.process_time() - t
            total += nodes * per_msg
            while True:
                t = time.process_time()
                batch = q.next_batch(200, 1 << 20)
                spent["next_batch"] += time.process_time() - t
                if batch is None:
                    break
                t = time.process_time()
                q.batch_delivered(batch.id, "http", ["http"])
                spent["batch_delivered"] += time.process_time() - t
        q.close()
    return {name: s / total * 1e6 for name, s in spent.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--per-message", type=int, default=28)
    ap.add_argument("--messages", type=int, default=150)
    args = ap.parse_args()
    us = run(args.nodes, args.per_message, args.messages)
    print("  ".join(f"{name} {v:.2f}" for name, v in us.items())
          + f"  total {sum(us.values()):.2f} CPU us per record")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
