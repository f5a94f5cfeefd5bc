"""The queue's one async interface (gateway/queue/aio.py) and its writer thread (writer.py):
RECORDS payloads handed over whole are decoded, validated and stored on the writer thread, the
messages waiting together share one COMMIT, each caller gets its own outcome. Real SQLite
file, real sessions."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import cbor2
import pytest
from roadside.gateway import protocol as p
from roadside.gateway.errors import ProtocolError
from roadside.gateway.links.sim import SimLink
from roadside.gateway.queue import REFUSED_JUMP, REFUSED_RESUME, Queue, intake
from roadside.gateway.session import SessionManager


def records(seqs: list[int], from_seq: int | None = None) -> bytes:
    return p.encode_message({0: p.RECORDS, 1: seqs[0] if from_seq is None else from_seq,
                             2: [[s, 1_700_000_000 + s, p.KIND_LEVEL, 0, {1: 50.0 + s}]
                                 for s in seqs]})


def hello_looking_like_records(node: str) -> bytes:
    """A HELLO whose first key says RECORDS and whose last repeats key 0 as HELLO (CBOR decoders
    keep the last): only decoding tells what it is."""
    pairs = [(1, node), (2, "water"), (7, 1), (8, 1), (9, 1), (0, p.HELLO)]
    return bytes([0xa0 | (len(pairs) + 1), 0x00, p.RECORDS]) + b"".join(
        cbor2.dumps(k) + cbor2.dumps(v) for k, v in pairs)


def test_waiting_messages_are_decoded_on_the_writer_thread_in_one_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = Queue(tmp_path / "q.sqlite")
    threads: list[str] = []
    decode = p.decode_message

    def watched(payload: bytes) -> p.Message:
        threads.append(threading.current_thread().name)
        return decode(payload)

    monkeypatch.setattr(intake.protocol, "decode_message", watched)
    commits: list[str] = []
    queue._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)

    async def main() -> list[Any]:
        held = threading.Event()
        busy = asyncio.ensure_future(queue.call(held.wait, 10))   # the writer is busy...
        stores = [asyncio.ensure_future(queue.aio.store_message(
            f"wl-{i}", "water", records(list(range(1, 11 + i))), None, 1_700_000_000.0))
            for i in range(5)]
        stores.append(asyncio.ensure_future(queue.aio.store_message(
            "wl-bad", "water", records([0]), None, 1_700_000_000.0)))    # seq 0: malformed
        await asyncio.sleep(0)          # ...while every store is handed over
        held.set()
        await busy
        return await asyncio.gather(*stores, return_exceptions=True)

    try:
        outcomes = asyncio.run(asyncio.wait_for(main(), 20))
        assert [o.result.ack for o in outcomes[:5]] == [10, 11, 12, 13, 14]
        assert isinstance(outcomes[5], ProtocolError) and outcomes[5].code == p.ERR_MALFORMED
        assert "record 0" in str(outcomes[5])
        assert threads == ["queue"] * 6            # decoded where they are stored
        assert commits == ["COMMIT"]               # one group commit for all six
        assert queue.depth() == sum(range(10, 15)) and "wl-bad" not in queue.nodes
    finally:
        queue.close()


def test_store_message_outcomes(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q.sqlite")

    async def main() -> None:
        store = queue.aio.store_message
        done = await store("wl-1", "water", records([1, 2, 3]), None, 1.0)
        assert isinstance(done.message, p.Records) and done.result is not None
        assert done.refused is None and done.ack == done.result.ack == 3
        # Seqs of a lost counter (below the session's resume point): not stored.
        lost = await store("wl-1", "water", records([4, 5]), 10, 2.0)
        assert lost.refused == REFUSED_RESUME and lost.result is None and lost.ack == 3
        # A `from` beyond any journal: refused.
        far = p.MAX_SEQ_JUMP + 10
        jump = await store("wl-1", "water", records([far]), None, 3.0)
        assert jump.refused == REFUSED_JUMP and jump.ack == 3
        # Not RECORDS after all: handed back decoded, nothing stored.
        other = await store("wl-1", "water", hello_looking_like_records("wl-1"), None, 4.0)
        assert isinstance(other.message, p.Hello) and other.result is None
        with pytest.raises(ProtocolError, match="not CBOR|trailing"):
            await store("wl-1", "water", records([6]) + b"\x00", None, 5.0)
        assert queue.depth() == 3 and queue.ack_of("wl-1") == 3

    try:
        asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        queue.close()
    queue = Queue(tmp_path / "q.sqlite")         # the writer ran every job before close
    try:
        assert queue.depth() == 3
        with pytest.raises(RuntimeError, match="closed"):
            queue.close()
            asyncio.run(queue.aio.next_batch("http"))
    finally:
        queue.close()


def test_session_answers_what_the_writer_thread_decoded(tmp_path: Path) -> None:
    """A payload that looks like RECORDS but is a HELLO is answered as a HELLO; a malformed
    RECORDS on a session is answered ERROR 2 and counted."""
    async def main() -> None:
        queue = Queue(tmp_path / "q.sqlite")
        sessions = SessionManager(queue)
        link = SimLink("sim-0")
        await link.open()
        task = asyncio.create_task(sessions.serve(link))
        try:
            link.feed(p.encode_frame({0: p.HELLO, 1: "wl-1", 2: "water", 7: 1, 8: 1, 9: 1}))
            while not isinstance(await link.receive(), p.Ack):
                pass
            link.feed(p.encode_frame(hello_looking_like_records("wl-1")))
            assert isinstance(await link.receive(), p.Time)      # a HELLO: TIME, then ACK
            assert isinstance(await link.receive(), p.Ack)
            assert sessions.nodes["wl-1"].hellos == 2
            link.feed(p.encode_frame({0: p.RECORDS, 1: 1, 2: [[1, 1, 1, 0, None]]}))
            err = await link.receive()
            assert isinstance(err, p.Error) and err.code == p.ERR_MALFORMED
            assert link.malformed == 1 and queue.depth() == 0
            link.feed(p.encode_frame(records([1, 2])))
            ack = await link.receive()
            assert isinstance(ack, p.Ack) and ack.seq == 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await link.close()
            queue.close()

    asyncio.run(asyncio.wait_for(main(), 20))
