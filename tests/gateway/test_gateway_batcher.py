"""Batch cutting by count, bytes and age."""

from __future__ import annotations

from roadside.gateway.batcher import Batcher
from roadside.gateway.config import BatchConfig
from roadside.gateway.protocol import Record
from roadside.gateway.queue import Queue


def store(q: Queue, seqs, now: float, node: str = "a") -> None:
    q.store(node, "water", [Record(s, s, 1, 0, {1: 1.0, 3: s}) for s in seqs], seqs[0], now=now)


def test_cut_by_count_then_by_age(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    b = Batcher(q, BatchConfig(max_records=10, max_bytes=1 << 20, max_age_s=5.0),
                max_pending=100)
    store(q, range(1, 4), now=100.0)
    assert b.cut_due(now=101.0) == 0                  # 3 records, young: wait
    store(q, range(4, 24), now=101.0)
    assert b.cut_due(now=101.5) == 2                  # two full batches of 10
    assert [len(x) for x in q.pending_batches()] == [10, 10]
    assert b.cut_due(now=102.0) == 0                  # 3 left, the oldest from 101.0
    assert b.cut_due(now=106.1) == 1                  # aged out: a partial batch goes
    assert q.waiting() == (0, 0, None)


def test_cut_by_bytes_and_pending_limit(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    b = Batcher(q, BatchConfig(max_records=1000, max_bytes=2048, max_age_s=60.0),
                max_pending=2)
    store(q, range(1, 101), now=100.0)
    assert b.cut_due(now=100.0) == 2                  # bytes reached; at most 2 ahead
    assert all(len(x.body) <= 2048 for x in q.pending_batches())
    q.batch_delivered(q.pending_batches()[0].id)
    assert b.cut_due(now=100.0) == 1


def test_nothing_waiting_beyond_a_gap(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    b = Batcher(q, BatchConfig(max_records=1, max_bytes=1 << 20, max_age_s=0.0))
    store(q, [2, 3], now=100.0)                       # from = 2: seq 1 is given up
    q.store("b", "water", [Record(5, 5, 1, 0, {})], 1, now=100.0)
    assert q.waiting()[0] == 2                        # node a: from=2 gave up seq 1
    assert b.cut_due(now=200.0) == 2
    assert q.waiting()[0] == 0 and q.depth() == 3     # b's seq 5 waits for 1..4
