#!/usr/bin/env python3
"""Gateway fuzzing, the long form: 1,000,000 hostile frames through the real gateway core.

    .venv/bin/python bench/bench_fuzz_gateway.py [--frames 1000000] [--links 4] [--seed 1]
                                                 [--dir /dev/shm]

Four links (SimLink: the serial link's frame decoder, `incoming` queue and counters, without
a pty) each carry one node that says HELLO; then every frame is drawn from: valid RECORDS that
continue the node's seqs (so the queue really stores, commits and ACKs), valid messages with
hostile values (ints up to 2^70, text ids, nested values, HELLOs claiming other ids or seq
jumps, REPLYs to pending commands), byte-flipped and truncated versions of those, random bytes,
and payloads known to have hurt (cyclic CBOR tags 28/29, seq 2^63, deep nesting). Each frame
is fed to its link and every payload it yields goes through `SessionManager.handle` (the real
decoder, session, SQLite queue with group commit, Commander) on one asyncio loop. A pending
command per node (`info`) is re-issued whenever it ends. Every 2,000 frames waiting records
are cut into batches and marked delivered (the uplink's part), as the daemon would.

Reported: frames/s, uncaught exceptions (anything `handle` raised: the daemon's serve()
would log it and go on; here it is a failure), the slowest frame (feed to last answer), the
resident size growth after a 20,000-frame warm-up, and what the gateway did with the frames
(stored records, ERROR answers by code, refused HELLOs by reason, link decoder drops).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cbor2
from roadside.gateway import protocol as p
from roadside.gateway.commands import Commander, CommandError
from roadside.gateway.links.sim import SimLink
from roadside.gateway.queue import Queue
from roadside.gateway.session import SessionManager
from roadside.gateway.status import Status

WARMUP = 20_000
DELIVER_EVERY = 2_000
FRESH_IDS = 2_000
KNOWN = [
    bytes([0xA4, 0x00, 0x05, 0x01, 0x01, 0x02, 0xF5, 0x03, 0xD8, 0x1C, 0x81, 0xD8, 0x1D, 0x00]),
    b"\xa2\x00\x05\x01" + b"\x81" * 900 + b"\x00",
    cbor2.dumps({0: p.RECORDS, 1: 1, 2: [[1 << 63, 1, 1, 0, {}]]}),
    cbor2.dumps({0: p.HELLO, 1: "wl-0001", 2: "water", 7: (1 << 63) - 1, 9: (1 << 63) - 1}),
    cbor2.dumps({0: p.ACK, 1: 1 << 64}),
]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Mutator:
    """Draws one frame's bytes; `seqs` continues each node's valid records."""

    def __init__(self, rng: random.Random, nodes: list[str]) -> None:
        self.rng = rng
        self.nodes = nodes
        self.seqs = dict.fromkeys(nodes, 0)

    def int_(self) -> int:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.randrange(64)
        if r < 0.8:
            return self.rng.choice([(1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 64, -1,
                                    -(1 << 63), (1 << 17) + 2])
        return self.rng.randrange(-(1 << 70), 1 << 70)

    def value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth < 4 and r < 0.15:
            return [self.value(depth + 1) for _ in range(self.rng.randrange(4))]
        if depth < 4 and r < 0.25:
            return {self.int_(): self.value(depth + 1) for _ in range(self.rng.randrange(3))}
        return self.rng.choice([self.int_(), self.rng.random() * 1e6, float("nan"),
                                float("inf"), "x" * self.rng.randrange(40), True, None,
                                os.urandom(self.rng.randrange(12)), self.rng.choice(self.nodes)])

    def valid_records(self, node: str) -> dict[int, Any]:
        first = self.seqs[node] + 1
        n = self.rng.randrange(1, 9)
        self.seqs[node] += n
        return {0: p.RECORDS, 1: first, 2: [
            [s, 1_700_000_000 + s, p.KIND_LEVEL, 0, {1: 10.5, 2: 0.1, 3: 1000 + s}]
            for s in range(first, first + n)]}

    def hostile_message(self, node: str) -> dict[int, Any]:
        r = self.rng.randrange(6)
        if r == 0:
            return {0: p.HELLO, 1: self.rng.choice([node, *self.nodes, "x" * 40, "wl-9999"]),
                    2: "water", 7: self.int_(), 9: self.int_()}
        if r == 1:
            return {0: p.RECORDS, 1: self.int_(), 2: [
                [self.int_(), self.int_(), self.int_(), self.int_(),
                 {self.int_(): self.value(3)}] for _ in range(self.rng.randrange(4))]}
        if r == 2:
            return {0: p.REPLY, 1: self.rng.choice([self.int_(), 1, 2, 3]),
                    2: self.rng.random() < 0.5, 3: self.value()}
        if r == 3:
            return {0: self.rng.choice([p.ACK, p.TIME, p.COMMAND, p.ERROR, 99]),
                    1: self.value(), 2: self.value()}
        return {self.int_(): self.value() for _ in range(self.rng.randrange(5))}

    def frame(self, node: str) -> bytes:
        r = self.rng.random()
        if r < 0.15:
            return p.encode_frame(self.valid_records(node))
        if r < 0.25:
            payload = self.rng.choice(KNOWN)
        elif r < 0.35:
            return os.urandom(self.rng.randrange(1, 80)) + b"\x00"
        else:
            payload = cbor2.dumps(self.hostile_message(node))
            if r < 0.55 and payload:
                raw = bytearray(payload)
                for _ in range(self.rng.randrange(1, 4)):
                    raw[self.rng.randrange(len(raw))] = self.rng.randrange(256)
                payload = bytes(raw)
            elif r < 0.65:
                payload = payload[:self.rng.randrange(len(payload) + 1)]
        return p.encode_frame(payload[:p.MAX_PAYLOAD])


async def fresh_ids(queue: Queue, sessions: SessionManager, links: list[SimLink],
                    n: int) -> str:
    """The issue's unbounded-state case, worst form: every HELLO on a port of its own (so no
    port binding stops it), a fresh id each; only MAX_NODES bounds what is kept."""
    status = Status("gw", "bench", queue, sessions, links, [])
    rss0, metrics0 = rss_mb(), len(status.metrics.render())
    for i in range(n):
        link = SimLink(f"/dev/ttyFRESH{i}")
        await link.open()
        link.feed(p.encode_frame({0: p.HELLO, 1: f"fresh-{i:05d}", 2: "water", 7: 1, 9: 1}))
        await sessions.handle(link, link.incoming.get_nowait())
        sessions.forget_link(link)
    metrics1 = len(status.metrics.render())
    refused = getattr(sessions, "refused", {}).get("nodes_full", 0)   # (older gateways)
    return (f"nodes kept {len(sessions.nodes)} (max {getattr(sessions, 'max_nodes', None)}),"
            f" refused {refused:,}, RSS {rss_mb() - rss0:+.1f} MB, /metrics"
            f" {metrics0:,} -> {metrics1:,} bytes")


async def command(commander: Commander, node: str, outcomes: collections.Counter[str]) -> None:
    try:
        outcomes[(await commander.run(node, "info")).outcome] += 1
    except CommandError as exc:
        outcomes[f"http {exc.status}"] += 1


async def run(frames: int, n_links: int, seed: int, directory: str | None) -> int:
    # The gateway logs every refusal at most once per kind; here they would drown the figures.
    logging.getLogger("roadside").addHandler(logging.NullHandler())
    logging.getLogger("roadside").propagate = False
    rng = random.Random(seed)
    nodes = [f"wl-{i:04d}" for i in range(1, n_links + 1)]
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        queue = Queue(Path(tmp) / "q.sqlite", "gw", "bench")
        sessions = SessionManager(queue)
        commander = Commander(sessions, Path(tmp) / "commands.sqlite",
                              attempt_timeout_s=0.2, attempts=1)
        links = [SimLink(f"/dev/ttyFUZZ{i}") for i in range(n_links)]
        for link, node in zip(links, nodes, strict=True):
            await link.open()
            link.feed(p.encode_frame({0: p.HELLO, 1: node, 2: "water", 7: 1, 9: 1}))
            await sessions.handle(link, link.incoming.get_nowait())
        mut = Mutator(rng, nodes)
        commands: dict[str, asyncio.Task[Any]] = {}
        outcomes: collections.Counter[str] = collections.Counter()
        rehello = 0
        uncaught: collections.Counter[str] = collections.Counter()
        errors: collections.Counter[int] = collections.Counter()
        slowest = (0.0, b"")
        delivered = 0
        rss0 = rss1 = rss_mb()
        t0 = time.perf_counter()
        for i in range(frames):
            if i == WARMUP:
                rss0, t0 = rss_mb(), time.perf_counter()
            k = rng.randrange(n_links)
            link, node = links[k], nodes[k]
            task = commands.get(node)
            if task is None or task.done():
                commands[node] = asyncio.create_task(command(commander, node, outcomes))
            frame = mut.frame(node)
            start = time.perf_counter()
            link.feed(frame)
            while not link.incoming.empty():
                try:
                    await sessions.handle(link, link.incoming.get_nowait())
                except Exception as exc:  # noqa: BLE001 - counted: the figure to keep at 0
                    uncaught[type(exc).__name__] += 1
            took = time.perf_counter() - start
            if took > slowest[0]:
                slowest = (took, frame)
            no_session = False
            while not link.sent.empty():
                for payload in link._node_decoder.feed(link.sent.get_nowait()):
                    if payload[1:3] == b"\x00\x07":          # {0: ERROR, 1: code, ...}
                        code = cbor2.loads(payload)[1]
                        errors[code] += 1
                        no_session |= code == p.ERR_NO_SESSION
            if no_session:
                # As the firmware does: HELLO again, then resend from the first unacked.
                rehello += 1
                ack = queue.ack_of(node)
                mut.seqs[node] = ack
                link.feed(p.encode_frame({0: p.HELLO, 1: node, 2: "water", 7: ack + 1,
                                          9: ack + 1}))
                while not link.incoming.empty():
                    await sessions.handle(link, link.incoming.get_nowait())
                link._node_decoder.reset()
                while not link.sent.empty():
                    link.sent.get_nowait()
            if i % DELIVER_EVERY == DELIVER_EVERY - 1:
                while (batch := queue.next_batch(5000, 4 << 20)) is not None:
                    queue.batch_delivered(batch.id)
                    delivered += len(batch)
                await asyncio.sleep(0)
            if i % 100_000 == 99_999:
                print(f"  {i + 1:>9,} frames  {(i + 1 - WARMUP) / (time.perf_counter() - t0):,.0f}"
                      f" frames/s  rss {rss_mb():.1f} MB", file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - t0
        rss1 = rss_mb()
        for task in commands.values():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*commands.values(), return_exceptions=True)
        dec = collections.Counter[str]()
        for link in links:
            dec.update({k: v for k, v in link.counters().items()
                        if k in ("frames", "crc", "cobs", "oversize", "malformed")})
        stored = sum(i.stored for i in queue.nodes.values())
        fresh = await fresh_ids(queue, sessions, links, FRESH_IDS)
        commander.close()
        queue.close()
    n = frames - WARMUP
    print(f"gateway fuzz: {frames:,} frames over {n_links} links (seed {seed},"
          f" queue in {directory or tempfile.gettempdir()})")
    print(f"  frames/s (after {WARMUP:,} warm-up)   {n / elapsed:,.0f}")
    print(f"  uncaught exceptions                  {sum(uncaught.values())}"
          f" {dict(uncaught) if uncaught else ''}")
    print(f"  slowest frame                        {slowest[0] * 1000:.1f} ms"
          f" ({len(slowest[1])} bytes)")
    print(f"  RSS after warm-up -> end             {rss0:.1f} -> {rss1:.1f} MB"
          f" (growth {rss1 - rss0:+.1f} MB)")
    print(f"  records stored / delivered            {stored:,} / {delivered:,}")
    print(f"  ERROR answers by code                {dict(sorted(errors.items()))}")
    print(f"  HELLOs refused by reason             {getattr(sessions, 'refused', None)}")
    print(f"  link decoder (all links)             {dict(dec)}")
    print(f"  REPLYs refused (wrong link/node)     {getattr(commander, 'foreign_replies', None)}")
    print(f"  commands by outcome                  {dict(sorted(outcomes.items()))}")
    print(f"  HELLOs again after ERROR 3 (as a node does)  {rehello:,}")
    print(f"  then {FRESH_IDS:,} HELLOs with fresh ids, each on its own port: {fresh}")
    return 1 if uncaught else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--links", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                    help="where the queue file goes (default /dev/shm: the code, not fsync)")
    a = ap.parse_args()
    return asyncio.run(run(max(a.frames, WARMUP + 1), a.links, a.seed, a.dir))


if __name__ == "__main__":
    sys.exit(main())
