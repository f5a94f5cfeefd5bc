"""The queue's disk budget: telemetry evicted oldest-first, priority never, then backpressure."""

from __future__ import annotations

import asyncio

import pytest
from roadside.gateway import protocol as p
from roadside.gateway.config import parse
from roadside.gateway.errors import ConfigError, QueueFullError
from roadside.gateway.protocol import FLAG_PRIORITY, Record
from roadside.gateway.queue import Queue
from roadside.gateway.session import SessionManager


def rec(seq: int, flags: int = 0) -> Record:
    kind = p.KIND_ALARM if flags else p.KIND_LEVEL
    body = {1: "alarm", 2: 50.0, 3: "alert"} if flags else {1: seq / 10, 2: 0.5, 3: seq}
    return Record(seq, 1_700_000_000 + seq, kind, flags, body)


def seqs(q: Queue, node: str) -> list[int]:
    return [seq for _, seq, _, _ in q.stored(node)]


def test_tiny_budget_evicts_telemetry_oldest_first_then_backpressure(tmp_path, caplog):
    q = Queue(tmp_path / "q.sqlite", max_bytes=3000)
    q.store("a", "water", [rec(s) for s in range(1, 11)], 1, now=100)
    batch = q.next_batch(10, 1 << 20, now=100)          # cut: its records are never evicted
    body = batch.body
    for s in range(11, 81, 5):                           # keep filling with telemetry
        q.store("a", "water", [rec(x) for x in range(s, s + 5)], s, now=100 + s)
    assert q.bytes() <= 3000 and q.counters["evicted"] > 0 and not q.backpressure
    held = seqs(q, "a")
    assert held[:10] == list(range(1, 11))               # the pending batch is intact
    newest = held[10:]
    assert newest == list(range(81 - len(newest), 81))   # the oldest waiting ones went first
    assert q.depth() == len(held) and q.ack_of("a") == 80
    assert q.counters["evicted"] == 70 - len(newest)
    assert "evicted" in caplog.text and "max_bytes = 3000" in caplog.text
    # Priority records are never evicted: they push the remaining telemetry out...
    seq = 81
    with pytest.raises(QueueFullError, match="max_bytes is 3000"):
        while True:
            q.store("a", "water", [rec(seq, FLAG_PRIORITY)], seq, now=200 + seq)
            seq += 1
    assert q.backpressure and q.ack_of("a") == seq - 1
    held = seqs(q, "a")
    assert held[:10] == list(range(1, 11)) and held[10:] == list(range(81, seq))
    # ...and when only they (and the pending batch) remain, telemetry is refused too.
    with pytest.raises(QueueFullError):
        q.store("a", "water", [rec(seq)], seq)
    assert q.pending_batches()[0].body == body           # same bytes: stable idempotency
    # Delivering frees the budget: storing works again.
    q.batch_delivered(batch.id, "http", ["http"])
    assert not q.backpressure
    q.store("a", "water", [rec(seq)], seq)
    assert q.ack_of("a") == seq and not q.backpressure
    q.close()
    again = Queue(tmp_path / "q.sqlite", max_bytes=3000)  # the byte count survives a restart
    assert again.bytes() == q.bytes() and again.counters["evicted"] == q.counters["evicted"]


class _Link:
    port = "/dev/test"
    is_open = True

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.malformed = 0

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)


def test_session_answers_busy_when_only_priority_records_fill_the_budget(tmp_path):
    q = Queue(tmp_path / "q.sqlite", max_bytes=600)
    sessions = SessionManager(q)
    link = _Link()

    def last() -> p.Message:
        return p.decode_message(p.FrameDecoder().feed(link.sent[-1])[0])

    async def main():
        hello = {0: p.HELLO, 1: "tb-1", 2: "toll", 3: "t", 4: "sim", 5: 1, 6: "power_on",
                 7: 1, 8: 1, 9: 1}
        await sessions.handle(link, p.FrameDecoder().feed(p.encode_frame(hello))[0])
        seq = 1
        while True:
            msg = {0: p.RECORDS, 1: seq, 2: [[seq, 1_700_000_000, p.KIND_ALARM, FLAG_PRIORITY,
                                              {1: "alarm", 2: 1.0, 3: "alert"}]]}
            await sessions.handle(link, p.FrameDecoder().feed(p.encode_frame(msg))[0])
            reply = last()
            if isinstance(reply, p.Error):
                return seq, reply
            assert reply == p.Ack(seq)
            seq += 1

    seq, err = asyncio.run(main())
    assert err.code == p.ERR_BUSY and seq > 2 and q.ack_of("tb-1") == seq - 1
    assert q.backpressure and q.counters["evicted"] == 0


def test_queue_max_bytes_config():
    base = {"gateway": {"id": "g", "site": "s"}}
    assert parse(base).queue.max_bytes == 256 * 1024 * 1024
    assert parse({**base, "queue": {"max_bytes": 1 << 20}}).queue.max_bytes == 1 << 20
    with pytest.raises(ConfigError, match=r"queue.max_bytes: must be an integer 65536\.\."):
        parse({**base, "queue": {"max_bytes": 100}})
    with pytest.raises(ConfigError, match="queue.max_byte: unknown key"):
        parse({**base, "queue": {"max_byte": 100}})
