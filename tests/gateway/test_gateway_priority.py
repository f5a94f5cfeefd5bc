"""Priority lane: a PRIORITY record is cut at once, in its node's seq order, and reaches a
real receiver within 100 ms of the node sending it."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time

from roadside.gateway import protocol as p
from roadside.gateway.batcher import Batcher
from roadside.gateway.config import BatchConfig
from roadside.gateway.protocol import FLAG_PRIORITY, Record
from roadside.gateway.queue import Queue
from roadside.tools.sim import procs
from roadside.tools.sim.gateway_toml import GatewaySettings, write
from roadside.tools.sim.receiver_store import read_seqs
from support.gateway_status import link_open


def rec(seq: int, flags: int = 0) -> Record:
    kind = p.KIND_ALARM if flags & FLAG_PRIORITY else p.KIND_LEVEL
    body = {1: "alarm", 2: 50.0, 3: "alert"} if flags else {1: seq / 10, 3: seq}
    return Record(seq, 1_700_000_000 + seq, kind, flags, body)


def test_priority_cut_takes_the_node_backlog_up_to_it_and_nothing_else(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    q.store("a", "water", [rec(1), rec(2)], 1, now=100)
    q.store("b", "water", [rec(1), rec(2)], 1, now=100)
    q.store("a", "water", [rec(3, FLAG_PRIORITY), rec(4)], 3, now=101)
    q.store("c", "water", [rec(2, FLAG_PRIORITY)], 1, now=101)   # beyond a gap: waits
    assert q.priority_waiting()
    b = q.next_priority_batch(100, 1 << 20)
    assert b.keys == (("a", 1), ("a", 2), ("a", 3))
    assert not q.priority_waiting() and q.next_priority_batch(100, 1 << 20) is None
    q.store("c", "water", [rec(1)], 1, now=102)                  # the gap fills
    assert q.priority_waiting()
    assert q.next_priority_batch(100, 1 << 20).keys == (("c", 1), ("c", 2))
    rest = q.next_batch(100, 1 << 20)
    assert rest.keys == (("b", 1), ("b", 2), ("a", 4))
    q.close()
    # The lane survives a restart: an uncut priority record is still found.
    q = Queue(tmp_path / "q.sqlite")
    q.store("b", "water", [rec(3, FLAG_PRIORITY)], 3)
    q.close()
    q = Queue(tmp_path / "q.sqlite")
    assert q.priority_waiting() and q.next_priority_batch(10, 1 << 20).keys == (("b", 3),)


def test_batcher_cuts_priority_even_with_batches_pending(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    batcher = Batcher(q, BatchConfig(1000, 1 << 20, 60.0))
    for n in range(3):      # three pending already (the uplink is slow)
        q.store(f"n{n}", "water", [rec(1)], 1)
        q.next_batch(1, 1 << 20)
    q.store("a", "water", [rec(1)], 1)
    assert batcher.cut_due() == 0          # telemetry waits for max_age_s
    q.store("a", "water", [rec(2, FLAG_PRIORITY)], 2)
    assert batcher.cut_due() == 1
    assert q.pending_batches()[-1].keys == (("a", 1), ("a", 2))


def test_priority_record_reaches_the_receiver_within_100_ms(tmp_path, fake_node,
                                                            start_receiver):
    receiver = start_receiver()
    # Telemetry would wait 30 s for its batch: only the priority lane can be this fast.
    cfg = write(tmp_path / "gw.toml", [fake_node.path], tmp_path / "data",
                receiver.batches_url, "127.0.0.1:0",
                GatewaySettings(max_records=1000, max_age_s=30.0))
    latencies: list[float] = []

    async def run(url: str) -> None:
        await link_open(url, fake_node.path)     # pyserial flushes the input on open
        fake_node.hello("wl-0009")
        await fake_node.expect(p.Ack, seq=0, timeout=10)
        seq = 1
        for _round in range(5):
            fake_node.records([seq, seq + 1])                       # telemetry, waits
            await fake_node.expect(p.Ack, seq=seq + 1)
            sent = time.time()
            fake_node.records([seq + 2], flags=FLAG_PRIORITY)       # an alarm
            await fake_node.expect(p.Ack, seq=seq + 2)
            arrived = None
            for _ in range(200):
                with sqlite3.connect(receiver.db) as db:
                    row = db.execute("SELECT b.received FROM records r JOIN batches b ON"
                                     " r.batch = b.id WHERE r.node = ? AND r.seq = ?",
                                     ("wl-0009", seq + 2)).fetchone()
                if row:
                    arrived = row[0]
                    break
                await asyncio.sleep(0.01)
            assert arrived is not None, "the priority record never arrived"
            latencies.append(arrived - sent)
            seq += 3

    proc, url = procs.start_gateway(cfg, tmp_path / "gw.log")
    try:
        asyncio.run(asyncio.wait_for(run(url), 30))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        procs.stop(proc)
    print(f"priority latency node->receiver: {[round(x * 1000, 1) for x in latencies]} ms")
    assert max(latencies) < 0.1, latencies
    # Every telemetry record before an alarm arrived with it, in order.
    assert read_seqs(receiver.db) == {"wl-0009": list(range(1, 16))}
