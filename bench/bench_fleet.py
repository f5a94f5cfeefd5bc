#!/usr/bin/env python3
"""A city in miniature on one machine: N gateway daemons x M light nodes -> K `roadside
ingest` processes -> one PostgreSQL (tools/sim/fleet.py), with faults, and the figures of
docs/PERFORMANCE.md ("City scale").

    .venv/bin/python bench/bench_fleet.py                         # 20 x 50, 2 ingest, 1 s period
    .venv/bin/python bench/bench_fleet.py --gateways 3 --nodes 5 --steady 10 --partition 5

Phases:
  steady      every node makes a record per --period; reported: rows/s into PostgreSQL in
              total and per ingest process (its /stats), node -> row latency p50/p99 of the
              records made in this window (made: the light node's clock; row: PostgreSQL's
              clock_timestamp() at insert; one machine, one clock); each ingest process's
              CPU (user + system, /proc) per record it stored, and PostgreSQL's (the
              postmaster and its backends) per row
  faults      an ingest process killed -9 (back after 2 s), a gateway killed -9 (back after
              2 s), PostgreSQL restarted (pg_ctl stop -m fast, start), one gateway partitioned
              from the backend for --partition s then healed: its backlog and drain time
  count       nodes stop; every queue drains; every made (node, seq) is one row: lost and
              duplicated must both be 0 (exit 1 otherwise)
  blast       --blast s: pre-built 200-record batches POSTed as fast as the K processes take
              them (4 at a time each): the ingest side's own ceiling, records/s and CPU per
              record per process
  size        bytes per row of the records table, its indexes included

PostgreSQL is a throwaway cluster (tests/support/postgres.py: initdb in a temp dir, fsync
off), or --db URL for one of yours (its records and batches tables are used as they are).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import cbor2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from roadside.tools.sim import procs  # noqa: E402
from roadside.tools.sim.fleet import Fleet, FleetOptions, fleet_rows  # noqa: E402
from support.postgres import PgCluster  # noqa: E402


def query(url: str, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql.encode()).fetchall()


def cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process so far (/proc/PID/stat)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pg_cpu(pg: PgCluster | None) -> float:
    """CPU seconds of the PostgreSQL server: the postmaster and its live children (the pooled
    backends live through a run; a backend that exited takes its CPU with it)."""
    if pg is None:
        return 0.0
    import os

    pid = int((pg.data / "postmaster.pid").read_text().split()[0])
    total = cpu_s(pid)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                total += cpu_s(int(d))
    return total


def ingest_cpu(fleet: Fleet) -> list[float]:
    return [cpu_s(i.proc.proc.pid) if i.proc else 0.0 for i in fleet.ingests]


def count_rows(url: str) -> int:
    try:
        return query(url, "SELECT count(*) FROM records")[0][0]
    except Exception:
        return -1


async def steady(fleet: Fleet, url: str, seconds: float, pg: PgCluster | None) -> dict:
    s0, r0, t0, c0 = await fleet.ingest_stats(), count_rows(url), time.time(), ingest_cpu(fleet)
    p0 = pg_cpu(pg)
    await asyncio.sleep(seconds)
    s1, r1, t1, c1 = await fleet.ingest_stats(), count_rows(url), time.time(), ingest_cpu(fleet)
    p1 = pg_cpu(pg)
    recs = [(b or {}).get("records", 0) - (a or {}).get("records", 0)
            for a, b in zip(s0, s1, strict=True)]
    us = [(y - x) * 1e6 / max(n, 1) for x, y, n in zip(c0, c1, recs, strict=True)]
    return {"t0": t0, "t1": t1, "rows_per_s": (r1 - r0) / (t1 - t0),
            "per_ingest": [n / (t1 - t0) for n in recs], "us_per_record": us,
            "pg_us": (p1 - p0) * 1e6 / max(r1 - r0, 1)}


async def blast(fleet: Fleet, seconds: float, pg: PgCluster | None,
                per_batch: int = 200) -> tuple[list[float], list[float], float]:
    """POST pre-built batches of new records to every ingest process, 4 in flight each:
    (records/s, CPU us per record) per process, and PostgreSQL's CPU us per record."""
    stored = [0] * len(fleet.ingests)
    c0, p0 = ingest_cpu(fleet), pg_cpu(pg)
    deadline = time.monotonic() + seconds
    t = int(time.time())

    def body(worker: str, n: int) -> tuple[str, bytes]:
        bid = str(uuid.uuid4())
        recs = [{"node": f"blast-{worker}-{i % 50}", "seq": n * 4 + i // 50 + 1, "t": t,
                 "kind": "level", "role": "water", "synced": True, "priority": False,
                 "data": {"level_cm": 20.5, "rate_cm_per_min": 0.1, "distance_mm": 1800}}
                for i in range(per_batch)]
        return bid, cbor2.dumps({"batch": bid, "gateway": "blast", "site": "blast",
                                 "created": t, "records": recs})

    async def worker(session: aiohttp.ClientSession, k: int, w: int) -> None:
        url = f"http://127.0.0.1:{fleet.ingests[k].port}/batches"
        n = 0
        while time.monotonic() < deadline:
            bid, data = body(f"{k}-{w}", n)
            n += 1
            async with session.post(url, data=data, headers={
                    "Content-Type": "application/cbor", "Idempotency-Key": bid}) as resp:
                if resp.status == 200:
                    stored[k] += (await resp.json())["stored"]

    t0 = time.monotonic()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session, k, w) for k in range(len(fleet.ingests))
                               for w in range(4)))
    c1, p1 = ingest_cpu(fleet), pg_cpu(pg)
    return ([s / (time.monotonic() - t0) for s in stored],
            [(y - x) * 1e6 / max(n, 1) for x, y, n in zip(c0, c1, stored, strict=True)],
            (p1 - p0) * 1e6 / max(sum(stored), 1))


async def run(args: argparse.Namespace, url: str, pg: PgCluster | None, run_dir: Path) -> int:
    fleet = Fleet(FleetOptions(db_url=url, run_dir=run_dir, gateways=args.gateways,
                               nodes=args.nodes, ingests=args.ingests, period=args.period,
                               alarm_every=args.alarm_every, seed=args.seed))
    try:
        await fleet.start(partitionable=0)
        await asyncio.sleep(args.warmup)
        fleet.log(f"steady {args.steady:.0f} s")
        st = await steady(fleet, url, args.steady, pg)
        held = took = 0.0
        if not args.no_faults:
            await fleet.kill_ingest(down_s=2.0)
            await fleet.kill_gateway(down_s=2.0, spare=0)
            if pg is not None:
                await asyncio.to_thread(pg.restart)
                fleet.log("PostgreSQL restarted")
            held, took = await fleet.partition(0, args.partition, drain_timeout=600)
        await fleet.drain(timeout=600)
        rows, stored = await asyncio.to_thread(fleet_rows, url)
        c = fleet.count(rows, stored)
        made_in = {(n.id, s): m for n in fleet.nodes for s, m in n.made.items()
                   if st["t0"] <= m <= st["t1"]}
        lat = sorted(rcv - made_in[(node, seq)] for node, seq, rcv in rows
                     if (node, seq) in made_in)

        def q(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

        blast_rates, blast_us, blast_pg = (await blast(fleet, args.blast, pg) if args.blast
                                           else ([], [], 0.0))
        print()
        print(f"fleet: {args.gateways} gateways x {args.nodes} nodes, {args.ingests} ingest"
              f" processes, a record per {args.period:g} s per node, one PostgreSQL")
        print(f"steady {args.steady:.0f} s: {st['rows_per_s']:.0f} rows/s into PostgreSQL;"
              " per ingest process " + ", ".join(f"{r:.0f}" for r in st["per_ingest"])
              + "; CPU per record " + ", ".join(f"{u:.0f} us" for u in st["us_per_record"])
              + (f"; PostgreSQL {st['pg_us']:.0f} us" if pg else ""))
        print(f"node -> row (records made in the steady window, {len(lat)}): p50"
              f" {q(0.5):.2f} s, p99 {q(0.99):.2f} s, max {lat[-1] if lat else 0:.2f} s")
        if not args.no_faults:
            print(f"partition of gateway 0 for {args.partition:.0f} s: {held:.0f} records"
                  f" held, drained in {took:.1f} s ({held / took if took else 0:.0f} records/s)")
        print(f"made {c.made}, rows {c.rows}, lost {c.lost}, duplicated {c.extra},"
              f" stored by batch answers {c.stored_by_batches}")
        if blast_rates:
            print(f"blast {args.blast:.0f} s: {sum(blast_rates):.0f} records/s in total; per"
                  " ingest process " + ", ".join(f"{r:.0f}" for r in blast_rates)
                  + "; CPU per record " + ", ".join(f"{u:.1f} us" for u in blast_us)
                  + (f"; PostgreSQL {blast_pg:.1f} us" if pg else ""))
        total, size, idx = (await asyncio.to_thread(query, url, (
            "SELECT count(*), pg_total_relation_size('records'), pg_indexes_size('records')"
            " FROM records")))[0]
        print(f"records table: {total} rows, {size / max(total, 1):.0f} bytes per row with its"
              f" indexes ({idx / max(total, 1):.0f} of them in the indexes)")
        ok = c.lost == 0 and c.extra == 0 and c.rows == c.stored_by_batches
        print("OK: 0 lost, 0 duplicated" if ok else "FAILED: records lost or duplicated")
        return 0 if ok else 1
    finally:
        await fleet.stop()
        procs.stop_all()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=20)
    ap.add_argument("--nodes", type=int, default=50, help="per gateway")
    ap.add_argument("--ingests", type=int, default=2)
    ap.add_argument("--period", type=float, default=1.0, help="s between a node's records")
    ap.add_argument("--alarm-every", type=int, default=100)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--steady", type=float, default=30.0)
    ap.add_argument("--partition", type=float, default=60.0)
    ap.add_argument("--blast", type=float, default=0.0)
    ap.add_argument("--no-faults", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--db", help="an existing PostgreSQL URL instead of a throwaway cluster")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        if args.db:
            return asyncio.run(run(args, args.db, None, Path(tmp)))
        with PgCluster() as pg:
            return asyncio.run(run(args, pg.url, pg, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
