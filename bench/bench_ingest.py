#!/usr/bin/env python3
"""Ingest benchmark: N simulated links -> decode -> SQLite -> batch -> HTTP sink on loopback.

    .venv/bin/python bench/bench_ingest.py                    # 1, 10 and 100 links
    .venv/bin/python bench/bench_ingest.py --links 10 --records 200000
    .venv/bin/python bench/bench_ingest.py --receiver         # the reference receiver instead

Every node is a SimLink (gateway/links/sim.py) fed pre-built frames exactly as a node sends
them: HELLO, then RECORDS messages of up to 32 water-level records (as many as fit the
1024-byte payload), one message in flight per node, the next one only after the gateway's ACK
(which it sends after the records' SQLite commit, synchronous=FULL). Everything behind the
links is the gateway's real code: SessionManager, Queue on a SQLite file, Batcher with the
default batch settings, HttpUplink. The HTTP sink is a separate process (so its CPU is not
counted as the gateway's) that answers 200 and counts the distinct (node, seq) it received.

Measured, per run: records/s (wall, from the first RECORDS fed to the last record delivered),
CPU µs per record (time.process_time of the gateway process: every thread, including the
simulated nodes' side, which only feeds bytes and compares ACK frames), and in the same run
the baseline: cbor2.loads of the same RECORDS payloads alone, and the ratio between the two.
By default the gateway process is pinned to one CPU and the sink to another.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import cbor2
from roadside.gateway import protocol as p
from roadside.gateway.batcher import Batcher
from roadside.gateway.config import BatchConfig, UplinkConfig
from roadside.gateway.history import History
from roadside.gateway.links.sim import SimLink
from roadside.gateway.queue import Queue
from roadside.gateway.queue import schema as queue_schema
from roadside.gateway.session import SessionManager
from roadside.gateway.uplinks import make_uplink

T0 = 1_763_000_000
DEFAULT_LINKS = (1, 10, 100)
DEFAULT_RECORDS = 40_000


# -- the workload ------------------------------------------------------------------------------


def node_records(node: int, count: int, rng: random.Random) -> list[list]:
    """`count` water-level records like a node's: level with noise, rate, raw distance."""
    base = 80.0 + 40.0 * rng.random()
    out = []
    for seq in range(1, count + 1):
        level = round(base + 15.0 * math.sin((seq + node * 7) / 50.0) + rng.gauss(0, 0.3), 1)
        rate = round(rng.gauss(0, 0.2), 2)
        out.append([seq, T0 + seq * 10, p.KIND_LEVEL, 0,
                    {1: level, 2: rate, 3: int(4000 - level * 10)}])
    return out


def records_frames(records: list[list]) -> tuple[list[bytes], list[bytes], list[int]]:
    """RECORDS payloads of up to WINDOW records under MAX_PAYLOAD, their frames, their last seq."""
    payloads, frames, lasts = [], [], []
    i = 0
    while i < len(records):
        n = min(p.WINDOW, len(records) - i)
        while True:
            chunk = records[i:i + n]
            payload = p.encode_message({0: p.RECORDS, 1: chunk[0][0], 2: chunk})
            if len(payload) <= p.MAX_PAYLOAD:
                break
            n -= 1
        payloads.append(payload)
        frames.append(p.encode_frame(payload))
        lasts.append(chunk[-1][0])
        i += n
    return payloads, frames, lasts


@dataclass
class Workload:
    nodes: list[str]
    hellos: list[bytes]
    frames: list[list[bytes]]
    lasts: list[list[int]]
    payloads: list[bytes]
    records: int

    @property
    def messages(self) -> int:
        return len(self.payloads)


def make_workload(links: int, records: int, seed: int = 1) -> Workload:
    rng = random.Random(seed)
    per_node = [records // links + (1 if i < records % links else 0) for i in range(links)]
    w = Workload([], [], [], [], [], sum(per_node))
    for i, count in enumerate(per_node):
        node = f"wl-{i:04d}"
        w.nodes.append(node)
        w.hellos.append(p.encode_frame({0: p.HELLO, 1: node, 2: "water", 3: "bench",
                                        4: "sim", 5: 1, 6: "power_on", 7: count + 1, 8: 1,
                                        9: 1}))
        payloads, frames, lasts = records_frames(node_records(i, count, rng))
        w.frames.append(frames)
        w.lasts.append(lasts)
        w.payloads.extend(payloads)
    return w


# -- the sink (a separate process) ---------------------------------------------------------------


def serve_sink(cpu: int | None) -> None:
    """`--serve-sink`: POST /batches -> 200, counting distinct (node, seq); GET /count."""
    from aiohttp import web

    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    keys: set[tuple[str, int]] = set()
    counts = {"records": 0, "batches": 0}

    async def batches(request: web.Request) -> web.Response:
        doc = cbor2.loads(await request.read())
        counts["batches"] += 1
        counts["records"] += len(doc["records"])
        keys.update((r["node"], r["seq"]) for r in doc["records"])
        return web.Response(status=200)

    async def count(_request: web.Request) -> web.Response:
        return web.json_response({**counts, "unique": len(keys), "cpu_s": time.process_time()})

    async def main() -> None:
        app = web.Application(client_max_size=16 << 20)
        app.router.add_post("/batches", batches)
        app.router.add_get("/count", count)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]   # type: ignore[union-attr]
        print(f"listening on http://127.0.0.1:{port}", flush=True)
        # Until the parent closes our stdin (or dies).
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(main())


class Sink:
    """The counting sink as a child process; `url` is its batch endpoint."""

    def __init__(self, cpu: int | None) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-sink"]
        if cpu is not None:
            cmd += ["--sink-cpu", str(cpu)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("listening on "):
            self.close()
            raise RuntimeError(f"the sink did not start: {line!r}")
        self.base = line.split()[-1]
        self.url = self.base + "/batches"

    def count(self) -> dict:
        import urllib.request
        with urllib.request.urlopen(self.base + "/count", timeout=10) as resp:
            return json.loads(resp.read())

    def close(self) -> None:
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# -- one run -------------------------------------------------------------------------------------


@dataclass
class Result:
    links: int
    records: int
    messages: int
    wall_s: float
    records_per_s: float
    cpu_us_per_record: float
    delivered: int
    sink_unique: int
    batches: int
    cbor2_records_per_s: float
    cbor2_us_per_record: float
    ratio_cpu: float           # gateway CPU per record / cbor2.loads CPU per record
    sink_cpu_s: float | None = None
    floor_record_rows_us: float = math.nan    # naive durable floor, one row per record
    floor_message_rows_us: float = math.nan   # naive durable floor, one row per message
    ratio_record_rows: float = math.nan       # gateway CPU per record / the floor's
    ratio_message_rows: float = math.nan


async def _node(link: SimLink, frames: list[bytes], lasts: list[int]) -> None:
    """One node: RECORDS, wait for its ACK (compared as bytes: the ACK frame is exact), next."""
    for frame, last in zip(frames, lasts, strict=True):
        link.feed(frame)
        want = p.encode_frame({0: p.ACK, 1: last})
        while True:
            got = await link.sent.get()
            if got == want:
                break
            msg = p.decode_message(p.FrameDecoder().feed(got)[0])
            if isinstance(msg, p.Error):
                raise RuntimeError(f"{link.port}: gateway answered ERROR {msg.code}: "
                                   f"{msg.message}")


async def _pipeline(w: Workload, url: str, qdir: Path, timeout: float,
                    batch: BatchConfig) -> tuple[float, float, int, int]:
    queue = Queue(qdir / "queue.sqlite", "gw-bench", "bench")
    sessions = SessionManager(queue)
    batcher = Batcher(queue, batch, uplinks=["http"])
    uplink = make_uplink(UplinkConfig("http", url, name="http", backoff_initial_s=0.05,
                                      backoff_max_s=0.5), queue, ["http"], batcher.wake,
                         "gw-bench", "bench")
    batcher.on_cut = [uplink.notify]
    sessions.on_stored = batcher.wake
    sessions.on_records = History().add         # the status page's charts, as in the daemon
    links = [SimLink(f"sim-{n}") for n in w.nodes]
    tasks: list[asyncio.Task] = []
    try:
        for link in links:
            await link.open()
            tasks.append(asyncio.create_task(sessions.serve(link)))
        tasks.append(asyncio.create_task(batcher.run()))
        tasks.append(asyncio.create_task(uplink.run()))
        # HELLO (not timed): TIME then ACK 0 come back.
        for link, hello in zip(links, w.hellos, strict=True):
            link.feed(hello)
        ack0 = p.encode_frame({0: p.ACK, 1: 0})
        for link in links:
            while await asyncio.wait_for(link.sent.get(), timeout) != ack0:
                pass
        cpu0, t0 = time.process_time(), time.perf_counter()
        def state() -> str:
            return (f"queue depth {queue.depth()}, counters {queue.counters}, batches pending"
                    f" {queue.batches_pending()}, waiting {queue.waiting()}, cut"
                    f" {batcher.batches_cut}, uplink {uplink.status()}")

        try:
            await asyncio.wait_for(asyncio.gather(
                *(_node(link, frames, lasts)
                  for link, frames, lasts in zip(links, w.frames, w.lasts, strict=True))),
                timeout)
        except TimeoutError:
            raise RuntimeError(f"the nodes' records were not all acked within {timeout} s;"
                               f" {state()}") from None
        deadline = time.monotonic() + timeout
        while queue.counters["delivered_records"] < w.records:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every record was delivered within {timeout} s;"
                                   f" {state()}")
            await asyncio.sleep(0.002)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return wall, cpu, queue.counters["delivered_records"], uplink.delivered_batches
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await uplink.close()
        queue.close()


def cbor2_baseline(payloads: list[bytes], records: int, min_s: float = 0.2) -> float:
    """CPU seconds per record of cbor2.loads over the same RECORDS payloads (best of 5)."""
    loads = cbor2.loads
    best = math.inf
    gc.collect()
    for _ in range(5):
        rounds, c0 = 0, time.process_time()
        while True:
            for pl in payloads:
                loads(pl)
            rounds += 1
            spent = time.process_time() - c0
            if spent >= min_s:
                break
        best = min(best, spent / (rounds * records))
    return best


# -- the naive floors (plain Python and SQLite, no gateway code) ---------------------------------


def _by_node_round_robin(w: Workload) -> list[tuple[str, bytes]]:
    """The workload's RECORDS payloads as the gateway sees them: one message per node in turn
    (each node has one message in flight), so a group commit holds one message per link."""
    per_node: list[list[bytes]] = []
    i = 0
    for frames in w.frames:
        per_node.append(w.payloads[i:i + len(frames)])
        i += len(frames)
    out = []
    for turn in range(max(len(x) for x in per_node)):
        for node, payloads in zip(w.nodes, per_node, strict=True):
            if turn < len(payloads):
                out.append((node, payloads[turn]))
    return out


def floor_run(w: Workload, qdir: Path, per_message: bool, batch_records: int = 200,
              group_max: int = 256) -> float:
    """CPU seconds per record of the naive durable pipeline: cbor2-decode each RECORDS
    message, store it in a group commit (one message per link, synchronous=FULL), cut batches
    of `batch_records` oldest-first, DELETE them. `per_message` False: one row per record (its
    record re-encoded once); True: one row per message (node, first seq, last seq, the records
    encoded once), batches spliced from whole rows, deleted by range."""
    path = qdir / ("floor-msg.sqlite" if per_message else "floor-rec.sqlite")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    if per_message:
        db.execute("CREATE TABLE q (node TEXT, lo INTEGER, hi INTEGER, n INTEGER, recs BLOB,"
                   " PRIMARY KEY (node, lo)) WITHOUT ROWID")
    else:
        db.execute("CREATE TABLE q (node TEXT, seq INTEGER, received REAL, rec BLOB,"
                   " PRIMARY KEY (node, seq)) WITHOUT ROWID")
        db.execute("CREATE INDEX q_received ON q (received)")
    db.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, body BLOB)")
    loads, dumps = cbor2.loads, cbor2.dumps
    messages = _by_node_round_robin(w)
    group = min(len(w.nodes), group_max)
    waiting: deque[tuple[str, int, int, int]] = deque()   # per_message: (node, lo, hi, n)
    waiting_n = 0
    gc.collect()
    c0 = time.process_time()
    for g in range(0, len(messages), group):
        db.execute("BEGIN IMMEDIATE")
        now = time.time()
        for node, payload in messages[g:g + group]:
            records = loads(payload)[2]
            if per_message:
                lo, hi = records[0][0], records[-1][0]
                db.execute("INSERT INTO q VALUES (?, ?, ?, ?, ?)",
                           (node, lo, hi, len(records), dumps(records)))
                waiting.append((node, lo, hi, len(records)))
            else:
                db.executemany("INSERT INTO q VALUES (?, ?, ?, ?)",
                               [(node, r[0], now, dumps(r)) for r in records])
            waiting_n += len(records)
        db.execute("COMMIT")
        while waiting_n >= batch_records:
            db.execute("BEGIN IMMEDIATE")
            if per_message:
                taken = []
                n = 0
                while waiting and n < batch_records:
                    taken.append(waiting.popleft())
                    n += taken[-1][3]
                parts = [db.execute("SELECT recs FROM q WHERE node = ? AND lo = ?",
                                    (node, lo)).fetchone()[0] for node, lo, _hi, _n in taken]
                db.execute("INSERT INTO b (body) VALUES (?)", (b"".join(parts),))
                db.executemany("DELETE FROM q WHERE node = ? AND lo >= ? AND lo <= ?",
                               [(node, lo, hi) for node, lo, hi, _n in taken])
            else:
                rows = db.execute("SELECT node, seq, rec FROM q ORDER BY received LIMIT ?",
                                  (batch_records,)).fetchall()
                n = len(rows)
                db.execute("INSERT INTO b (body) VALUES (?)",
                           (b"".join(r[2] for r in rows),))
                db.executemany("DELETE FROM q WHERE node = ? AND seq = ?",
                               [(r[0], r[1]) for r in rows])
            db.execute("DELETE FROM b")      # delivered
            db.execute("COMMIT")
            waiting_n -= n
    spent = time.process_time() - c0
    db.close()
    return spent / w.records


def run(links: int, records: int, *, url: str | None = None, sink_cpu: int | None = None,
        workdir: Path | None = None, timeout: float = 120.0, seed: int = 1,
        baseline_s: float = 0.2, batch: BatchConfig | None = None) -> Result:
    """One measured run; with `url` None a counting sink process is started and checked."""
    w = make_workload(links, records, seed)
    sink = Sink(sink_cpu) if url is None else None
    try:
        target = sink.url if sink is not None else url
        assert target is not None
        with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=workdir) as d:
            wall, cpu, delivered, batches = asyncio.run(
                _pipeline(w, target, Path(d), timeout, batch or BatchConfig()))
            floor_rec = floor_run(w, Path(d), per_message=False,
                                  batch_records=(batch or BatchConfig()).max_records)
            floor_msg = floor_run(w, Path(d), per_message=True,
                                  batch_records=(batch or BatchConfig()).max_records)
        per_rec = cbor2_baseline(w.payloads, w.records, baseline_s)
        unique, sink_cpu_s = delivered, None
        if sink is not None:
            c = sink.count()
            unique, sink_cpu_s = c["unique"], c["cpu_s"]
    finally:
        if sink is not None:
            sink.close()
    return Result(links, w.records, w.messages, wall, w.records / wall, cpu / w.records * 1e6,
                  delivered, unique, batches, 1 / per_rec, per_rec * 1e6,
                  (cpu / w.records) / per_rec, sink_cpu_s, floor_rec * 1e6, floor_msg * 1e6,
                  (cpu / w.records) / floor_rec, (cpu / w.records) / floor_msg)


# -- a backlog drain -----------------------------------------------------------------------------


async def _drain(url: str, qdir: Path, records: int, nodes: int, timeout: float,
                 batch: BatchConfig) -> tuple[float, float, float, int, int]:
    """Fill a queue with `records` records of `nodes` nodes as a day-long outage leaves it
    (stored and ACKed, nothing delivered), then start the batcher and the uplink and time
    until the queue is empty. Returns (fill s, drain wall s, drain CPU s, delivered,
    batches)."""
    queue = Queue(qdir / "queue.sqlite", "gw-bench", "bench")
    rng = random.Random(1)
    per_node = records // nodes
    t0 = time.perf_counter()
    chunk = 1000
    for i in range(nodes):
        rows = node_records(i, per_node, rng)
        for j in range(0, len(rows), chunk):
            part = [p.Record(seq, t, kind, flags, body)
                    for seq, t, kind, flags, body in rows[j:j + chunk]]
            queue.store(f"wl-{i:04d}", "water", part, 0, T0 + j)
    fill = time.perf_counter() - t0
    total = queue.depth()
    batcher = Batcher(queue, batch, uplinks=["http"])
    uplink = make_uplink(UplinkConfig("http", url, name="http", backoff_initial_s=0.05,
                                      backoff_max_s=0.5), queue, ["http"], batcher.wake,
                         "gw-bench", "bench")
    batcher.on_cut = [uplink.notify]
    tasks: list[asyncio.Task] = []
    try:
        cpu0, t0 = time.process_time(), time.perf_counter()
        tasks.append(asyncio.create_task(batcher.run()))
        tasks.append(asyncio.create_task(uplink.run()))
        deadline = time.monotonic() + timeout
        while queue.depth():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the backlog was not delivered within {timeout} s: depth"
                                   f" {queue.depth()} of {total}")
            await asyncio.sleep(0.05)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return fill, wall, cpu, queue.counters["delivered_records"], uplink.delivered_batches
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await uplink.close()
        queue.close()


def backlog(records: int, nodes: int, sink_cpu: int | None, workdir: Path | None,
            batch: BatchConfig, timeout: float = 1800.0) -> int:
    """Print the backlog drain's figures; 1 when the sink did not get every record once."""
    sink = Sink(sink_cpu)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-backlog-", dir=workdir) as d:
            fill, wall, cpu, delivered, batches = asyncio.run(
                _drain(sink.url, Path(d), records, nodes, timeout, batch))
        unique = sink.count()["unique"]
    finally:
        sink.close()
    want = records // nodes * nodes
    print(f"backlog: {want} records of {nodes} nodes stored in {fill:.1f} s; drained in"
          f" {wall:.1f} s ({want / wall:,.0f} records/s, {cpu / want * 1e6:.1f} CPU us per"
          f" record, {batches} batches), {unique} distinct at the sink", flush=True)
    return 0 if unique == delivered == want else 1


def fmt(r: Result) -> str:
    return (f"{r.links:>5} {r.records:>8} {r.messages:>7} {r.wall_s:>7.2f}"
            f" {r.records_per_s:>10,.0f} {r.cpu_us_per_record:>9.1f}"
            f" {r.cbor2_records_per_s:>11,.0f} {r.cbor2_us_per_record:>8.2f}"
            f" {r.ratio_cpu:>6.1f}x {r.floor_record_rows_us:>9.1f} {r.ratio_record_rows:>5.1f}x"
            f" {r.floor_message_rows_us:>9.1f} {r.ratio_message_rows:>5.1f}x {r.sink_unique:>8}")


HEADER = (f"{'links':>5} {'records':>8} {'msgs':>7} {'wall s':>7} {'records/s':>10}"
          f" {'CPU us/rec':>9} {'cbor2 rec/s':>11} {'cbor2 us':>8} {'ratio':>7}"
          f" {'rows/rec':>9} {'ratio':>6} {'rows/msg':>9} {'ratio':>6} {'at sink':>8}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--links", default=",".join(map(str, DEFAULT_LINKS)),
                    help="comma-separated link counts (default 1,10,100)")
    ap.add_argument("--records", type=int, default=DEFAULT_RECORDS,
                    help=f"records per run, spread over the links (default {DEFAULT_RECORDS})")
    ap.add_argument("--batch-records", type=int, default=BatchConfig.max_records,
                    help=f"[batch] max_records (default {BatchConfig.max_records}, the"
                         f" gateway's default)")
    ap.add_argument("--synchronous", choices=("FULL", "NORMAL", "OFF"), default="FULL",
                    help="SQLite synchronous mode of the queue, to measure what the fsync before"
                         " each ACK costs (the gateway always runs FULL)")
    ap.add_argument("--receiver", action="store_true",
                    help="deliver to the reference receiver (roadside receiver, zcbor-validated,"
                         " SQLite) instead of the counting sink")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not pin the gateway to CPU 0 and the sink to CPU 1")
    ap.add_argument("--dir", type=Path, default=None,
                    help="where the queue's SQLite file goes (default: the system temp dir)")
    ap.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    ap.add_argument("--backlog", type=int, default=0, metavar="RECORDS",
                    help="instead: a queue left with RECORDS records by an outage (stored,"
                         " nothing delivered), uplink back: time to empty it")
    ap.add_argument("--backlog-nodes", type=int, default=100,
                    help="nodes the backlog's records come from (default 100)")
    ap.add_argument("--serve-sink", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sink-cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_sink:
        serve_sink(args.sink_cpu)
        return 0
    sink_cpu = None
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not args.no_pin and len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[0]})
        sink_cpu = cpus[1]
    counts = [int(x) for x in args.links.split(",") if x.strip()]
    if args.synchronous != queue_schema.SYNCHRONOUS:
        queue_schema.SYNCHRONOUS = args.synchronous
        print(f"NOTE: queue with synchronous={args.synchronous}, for comparison only: the"
              f" gateway commits with FULL (an ACK promises the record survives power loss)")
    batch = BatchConfig(max_records=args.batch_records)
    where = args.dir or Path(tempfile.gettempdir())
    print(f"ingest: {args.backlog or args.records} water-level records"
          f" {'in the backlog' if args.backlog else 'per run'}, [batch] max_records"
          f" {batch.max_records}, queue in {where},"
          f" gateway on {'CPU ' + str(cpus[0]) if sink_cpu is not None else 'any CPU'},"
          f" {'reference receiver' if args.receiver else 'counting sink'} on"
          f" {'CPU ' + str(sink_cpu) if sink_cpu is not None else 'any CPU'}"
          f" ({os.cpu_count()} CPUs), Python {sys.version.split()[0]}", flush=True)
    if args.backlog:
        return backlog(args.backlog, args.backlog_nodes, sink_cpu, args.dir, batch)
    if not args.json:
        print(HEADER, flush=True)
    failed = False
    for n in counts:
        if args.receiver:
            r = _run_receiver(n, args.records, args.dir, sink_cpu, batch)
        else:
            r = run(n, args.records, sink_cpu=sink_cpu, workdir=args.dir, batch=batch)
        print(json.dumps(asdict(r)) if args.json else fmt(r), flush=True)
        if r.sink_unique != r.records or r.delivered != r.records:
            print(f"  ERROR: {r.records} records sent, {r.delivered} delivered,"
                  f" {r.sink_unique} distinct at the sink", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def _run_receiver(links: int, records: int, workdir: Path | None, cpu: int | None,
                  batch: BatchConfig) -> Result:
    """The same run against `roadside receiver` (a subprocess), counted from its database."""
    import sqlite3

    from roadside.tools.sim import procs
    from roadside.tools.sim.cddl import PROTOCOL_CDDL

    with tempfile.TemporaryDirectory(prefix="bench-receiver-", dir=workdir) as d:
        rec = procs.start_receiver(Path(d) / "receiver.sqlite", Path(d) / "receiver.log",
                                   cddl=PROTOCOL_CDDL)
        try:
            if cpu is not None:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(rec.proc.pid, {cpu})
            r = run(links, records, url=rec.url.rstrip("/") + "/batches", workdir=workdir,
                    batch=batch)
        finally:
            procs.stop(rec.proc)
        db = sqlite3.connect(Path(d) / "receiver.sqlite")
        try:
            tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master"
                                               " WHERE type = 'table'")]
            if "records" in tables:
                r.sink_unique = db.execute("SELECT count(*) FROM records").fetchone()[0]
        finally:
            db.close()
    return r


if __name__ == "__main__":
    sys.exit(main())
