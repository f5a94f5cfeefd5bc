"""Storage health: a full disk (SQLite's real SQLITE_FULL, "database or disk is full", forced by
`PRAGMA max_page_count` on a real file) is busy for the nodes, 503 on /healthz, retried for the
bookkeeping, never an exit; dead letters keep /healthz at 503 for a window; repeated errors are
logged as first line, count, recovery line."""

from __future__ import annotations

import asyncio
import logging

import pytest
from roadside.gateway import storage_health
from roadside.gateway.errors import QueueError, QueueFullError
from roadside.gateway.health import Health
from roadside.gateway.logs import Throttle
from roadside.gateway.metrics import backpressure
from roadside.gateway.protocol import Record
from roadside.gateway.queue import Queue
from roadside.gateway.storage_health import keep_trying


def recs(lo: int, hi: int, pad: int = 200) -> list[Record]:
    return [Record(s, 1_700_000_000 + s, 1, 0, {1: 10.5, 3: 900 + s, 4: "x" * pad})
            for s in range(lo, hi + 1)]


def fill(q: Queue) -> None:
    """The file may not grow any more: the next page it needs is SQLITE_FULL."""
    pages = q._db.execute("PRAGMA page_count").fetchone()[0]
    q._db.execute(f"PRAGMA max_page_count = {pages}")


def unfill(q: Queue) -> None:
    q._db.execute("PRAGMA max_page_count = 1073741823")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_throttle_first_line_then_a_count_a_minute_then_one_recovery_line(caplog):
    clock = Clock()
    log = logging.getLogger("roadside.gateway.test")
    t = Throttle(log, "disk", mono=clock)
    with caplog.at_level(logging.INFO, logger="roadside.gateway.test"):
        for _ in range(121):             # one error a second for two minutes
            t.error("cannot commit: database or disk is full")
            clock.t += 1
        t.ok()
        t.ok()                           # not failing any more: nothing
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "cannot commit: database or disk is full"
    assert lines[1].startswith("disk: 60 more times in 60 s, still failing")
    assert lines[2].startswith("disk: 60 more times in 60 s")
    assert lines[3] == "disk: recovered after 121 errors"
    assert len(lines) == 4


def test_disk_full_store_is_busy_unhealthy_then_recovers_with_one_line(tmp_path, caplog):
    q = Queue(tmp_path / "queue.sqlite")
    health = Health([], [], q)
    try:
        q.store("wl-0001", "water", recs(1, 5))
        assert health.check() == (True, {"status": "ok"})
        fill(q)
        with caplog.at_level(logging.INFO, logger="roadside.gateway"):
            for i in range(5):
                with pytest.raises(QueueError, match="database or disk is full"):
                    q.store_many([("wl-0001", "water", recs(6 + 40 * i, 45 + 40 * i))])
            ok, doc = health.check()
            assert not ok and doc["reason"].startswith("queue disk full: cannot commit")
            assert backpressure(q)
            assert q.depth() == 5 and q.ack_of("wl-0001") == 5     # nothing half-stored
            unfill(q)
            assert q.store_many([("wl-0001", "water", recs(6, 45))])[0].ack == 45
            assert health.check() == (True, {"status": "ok"})
            assert not backpressure(q)
        lines = [r.getMessage() for r in caplog.records]
        # Five failed commits: one error line, one "unhealthy", one line each when it clears.
        assert sum(m.startswith("queue storage error: cannot commit stored records: database"
                                " or disk is full; free space") for m in lines) == 1, lines
        assert sum(m.startswith("unhealthy: queue disk full") for m in lines) == 1
        assert len(lines) == 4, lines
        assert sum(m.startswith("queue storage works again") for m in lines) == 1
        assert sum(m.startswith("healthy again") for m in lines) == 1
    finally:
        q.close()


def test_bookkeeping_that_cannot_commit_is_retried_not_raised(tmp_path, monkeypatch):
    monkeypatch.setattr(storage_health, "RETRY_INITIAL_S", 0.01)
    q = Queue(tmp_path / "queue.sqlite")

    async def run() -> None:
        q.store("wl-0001", "water", recs(1, 200))
        batch = q.next_batch(500, 1 << 20)
        assert batch is not None
        fill(q)
        # A dead letter copies the body: it needs pages the file may not have.
        task = asyncio.create_task(keep_trying(q, "store the dead letter", q.dead_letter,
                                               batch.id, "http", "HTTP 400: no", ()))
        while not q.storage.failing:
            await asyncio.sleep(0.01)
        assert q.storage.disk_full and not task.done()
        assert q.batches_pending() == 1          # the mirror follows the rolled-back file
        unfill(q)
        await asyncio.wait_for(task, 10)
        assert q.batches_pending() == 0 and q.counters["dead_letters"] == 1
        assert not q.storage.failing

    try:
        asyncio.run(run())
    finally:
        q.close()


def test_a_failed_commit_leaves_no_transaction_open(tmp_path):
    q = Queue(tmp_path / "queue.sqlite")
    try:
        q.store("wl-0001", "water", recs(1, 3))
        fill(q)
        with pytest.raises(QueueError):
            q.store("wl-0001", "water", recs(4, 200))
        assert not q._db.in_transaction
        unfill(q)
        assert q.store("wl-0001", "water", recs(4, 200)).ack == 200
    finally:
        q.close()


def test_dead_lettering_keeps_healthz_503_for_the_window(tmp_path):
    clock = Clock()

    class Uplink:
        def status(self) -> dict:
            return {"name": "http", "state": "idle", "dead_letters": 1,
                    "last_error": "HTTP 400: bad batch"}

    q = Queue(tmp_path / "queue.sqlite")
    try:
        q.store("wl-0001", "water", recs(1, 3))
        batch = q.next_batch(10, 1 << 20)
        health = Health([], [Uplink()], q, mono=clock, dead_letter_s=900)
        assert health.check()[0]
        q.dead_letter(batch.id, "http", "HTTP 400: bad batch")
        ok, doc = health.check()
        assert not ok and doc["reason"].startswith("1 batches dead-lettered, the last 0 s ago")
        assert "HTTP 400: bad batch" in doc["reason"]
        clock.t += 899
        assert not health.check()[0]
        clock.t += 2
        assert health.check() == (True, {"status": "ok"})
    finally:
        q.close()


def test_budget_stops_at_the_free_space_of_the_volume(tmp_path, monkeypatch):
    q = Queue(tmp_path / "queue.sqlite", max_bytes=1 << 30)
    try:
        # A volume with 200 kB free beyond the reserve when the queue opened: what the queue
        # writes (file and WAL) comes off it.
        volume = storage_health.DISK_RESERVE + 200_000 + storage_health.file_bytes(q.path)
        free = {"bytes": volume}
        monkeypatch.setattr(q.storage, "free_bytes",
                            lambda: free["bytes"] - storage_health.file_bytes(q.path))
        # Plain telemetry: still not evicted for the disk (deleting frees no disk space).
        records = [Record(s, s, 1, 0, {1: "x" * 500}) for s in range(1, 400)]
        with pytest.raises(QueueFullError, match="the queue's volume is nearly full: the disk"
                                                 " allows"):
            for i in range(0, 399, 20):
                q.store("wl-0001", "water", records[i:i + 20])
        assert q.counters["evicted"] == 0
        assert q.backpressure and q.bytes() <= 100_000 + 20 * 600
        assert storage_health.file_bytes(q.path) < volume     # the disk never filled
        assert q.budget() < q.max_bytes
        free["bytes"] = 1 << 40
        assert q.budget() == q.max_bytes
    finally:
        q.close()
