"""The simulated link (gateway/links/sim.py) through the real sessions and queue, group commit
across links, and a smoke run of bench/bench_ingest.py with tiny sizes so the bench cannot rot."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

from roadside.gateway import protocol as p
from roadside.gateway.links import base
from roadside.gateway.links.sim import SimLink
from roadside.gateway.queue import Queue
from roadside.gateway.queue.schema import read_records
from roadside.gateway.session import SessionManager

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_ingest.py"


def hello(node: str) -> bytes:
    return p.encode_frame({0: p.HELLO, 1: node, 2: "water", 3: "test", 4: "sim", 5: 1,
                           6: "power_on", 7: 1, 8: 1, 9: 1})


def records(seqs: list[int]) -> bytes:
    return p.encode_frame({0: p.RECORDS, 1: seqs[0],
                           2: [[s, 1_700_000_000 + s, p.KIND_LEVEL, 0, {1: 10.5, 3: 900 + s}]
                               for s in seqs]})


async def next_of(link: SimLink, cls: type) -> p.Message:
    while True:
        msg = await link.receive(timeout=5)
        if isinstance(msg, cls):
            return msg


def test_sim_link_carries_a_session_byte_by_byte_and_unplugged(tmp_path):
    async def main():
        queue = Queue(tmp_path / "q.sqlite")
        sessions = SessionManager(queue)
        link = SimLink("sim-a")
        assert not link.send(b"x") and link.state == base.CLOSED
        await link.open()
        task = asyncio.create_task(sessions.serve(link))
        try:
            for b in hello("wl-1"):                 # any chunking: one byte at a time
                link.feed(bytes([b]))
            assert isinstance(await link.receive(timeout=5), p.Time)
            assert (await next_of(link, p.Ack)).seq == 0
            link.feed(records([1, 2, 3]) + records([4]))
            assert (await next_of(link, p.Ack)).seq == 3
            assert (await next_of(link, p.Ack)).seq == 4
            # Unplugged: half a frame is forgotten, bytes fed meanwhile are lost.
            frame = records([5])
            link.feed(frame[:5])
            link.unplug()
            link.feed(frame[5:])
            assert link.dropped_in == len(frame) - 5 and not link.send(b"x")
            link.plug()
            link.feed(frame)
            assert (await next_of(link, p.Ack)).seq == 5
            c = link.counters()
            assert c["frames"] == 4 and c["crc"] == 0 and c["bytes_out"] > 0
            assert queue.depth() == 5 and sessions.nodes["wl-1"].acked == 5
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await link.close()
            queue.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_group_commit_acks_every_link_after_the_shared_commit(tmp_path):
    """Many links at once: each gets its own ACK, all records are in the file when acked."""
    async def main():
        queue = Queue(tmp_path / "q.sqlite")
        sessions = SessionManager(queue)
        links = [SimLink(f"sim-{i}") for i in range(20)]
        tasks = []
        try:
            for i, link in enumerate(links):
                await link.open()
                tasks.append(asyncio.create_task(sessions.serve(link)))
                link.feed(hello(f"wl-{i}"))
            for link in links:
                assert (await next_of(link, p.Ack)).seq == 0
            for link in links:
                link.feed(records(list(range(1, 33))))
            acks = await asyncio.gather(*(next_of(link, p.Ack) for link in links))
            assert [a.seq for a in acks] == [32] * 20
            # Durable before the ACK: a second connection sees every record.
            import sqlite3
            db = sqlite3.connect(tmp_path / "q.sqlite")
            assert len(read_records(db)) == 20 * 32
            db.close()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            queue.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_store_many_refuses_one_store_and_keeps_the_others(tmp_path):
    q = Queue(tmp_path / "q.sqlite", max_bytes=4000)
    rec = [p.Record(s, 1_700_000_000 + s, p.KIND_ALARM, p.FLAG_PRIORITY,
                    {1: "alarm", 2: 1.0, 3: "alert"}) for s in range(1, 41)]
    results = q.store_many([("a", "water", rec[:10], 1, None),
                            ("b", "water", rec, 1, None),       # too big: backpressure
                            ("c", "water", rec[:5], 1, None)])
    assert results[0].ack == 10 and results[2].ack == 5
    assert type(results[1]).__name__ == "QueueFullError"
    q.close()
    q = Queue(tmp_path / "q.sqlite", max_bytes=4000)
    assert q.depth() == 15 and q.ack_of("a") == 10 and q.ack_of("b") == 0
    q.close()


def test_bench_ingest_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_ingest", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_ingest"] = bench
    try:
        spec.loader.exec_module(bench)
        for links in (1, 7):
            r = bench.run(links, 300, workdir=tmp_path, timeout=30, baseline_s=0.01)
            assert r.records == 300 and r.delivered == 300 and r.sink_unique == 300
            assert r.records_per_s > 0 and r.cbor2_records_per_s > 0
    finally:
        sys.modules.pop("bench_ingest", None)
