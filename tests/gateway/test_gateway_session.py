"""Sessions over a real pty pair: a fake node written here talks to the real serial link."""

from __future__ import annotations

import asyncio
import contextlib

from roadside.gateway import protocol as p
from roadside.gateway.links.serial import SerialLink
from roadside.gateway.queue import Queue
from roadside.gateway.session import SessionManager
from support.waits import until


def run_with_gateway(tmp_path, node, body, wall=None):
    """Start a serial link on the node's pty and a session manager, then run `body`."""

    async def main():
        queue = Queue(tmp_path / "q.sqlite", "gw", "s")
        kwargs = {"wall": wall} if wall else {}
        sessions = SessionManager(queue, **kwargs)
        link = SerialLink(node.path, 115200, retry_s=0.1)
        await link.open()
        served = asyncio.create_task(sessions.serve(link))
        try:
            # pyserial flushes the input on open: the fake node writes once the link is open
            # (is_open turns true only after pyserial's open has returned).
            await until(lambda: link.is_open, f"serial link {node.path} open")
            await asyncio.wait_for(body(queue, sessions, link), 15)
        finally:
            served.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await served
            await link.close()
            queue.close()

    asyncio.run(main())


def test_hello_gets_time_then_ack(tmp_path, fake_node):
    async def body(queue, sessions, link):
        fake_node.hello("wl-0001", next_seq=1, first_unacked=1)
        t = await fake_node.expect(p.Time)
        assert t.epoch_ms == 1_800_000_000_500
        ack = await fake_node.expect(p.Ack)
        assert ack.seq == 0
        assert fake_node.inbox == []
        state = sessions.nodes["wl-0001"]
        assert state.role == "water" and state.port == fake_node.path
        assert sessions.link_state(state) == "up"

    run_with_gateway(tmp_path, fake_node, body, wall=lambda: 1_800_000_000.5)


def test_records_are_committed_then_acked(tmp_path, fake_node):
    async def body(queue, sessions, link):
        fake_node.hello()
        await fake_node.expect(p.Ack, seq=0)
        fake_node.records([1, 2, 3])
        await fake_node.expect(p.Ack, seq=3)
        assert queue.ack_of("wl-0001") == 3 and queue.depth() == 3
        fake_node.records([2, 3, 4])                     # go-back-N resend overlaps
        await fake_node.expect(p.Ack, seq=4)
        fake_node.send({0: p.RECORDS, 1: 5, 2: [[5, 10, 2, 2, {1: "alert", 2: 55.5,
                                                               3: "normal"}]]})
        await fake_node.expect(p.Ack, seq=5)
        state = sessions.nodes["wl-0001"]
        assert (state.records, state.duplicates, state.acked) == (5, 2, 5)
        assert state.last_level == 14.0 and state.alarm == "alert"

    run_with_gateway(tmp_path, fake_node, body)


def test_hello_acks_what_is_stored_and_applies_first_unacked(tmp_path, fake_node):
    async def body(queue, sessions, link):
        fake_node.hello()
        fake_node.records([1, 2])
        await fake_node.expect(p.Ack, seq=2)
        # The node rebooted without seeing that ACK, and its journal starts at 5 (3, 4 lost).
        fake_node.hello(next_seq=9, first_unacked=5)
        await fake_node.expect(p.Time)
        await fake_node.expect(p.Ack, seq=4)
        assert queue.nodes["wl-0001"].gaps == 2

    run_with_gateway(tmp_path, fake_node, body)


def test_records_before_hello_get_error_3(tmp_path, fake_node):
    async def body(queue, sessions, link):
        fake_node.records([1])
        err = await fake_node.expect(p.Error)
        assert (err.code, err.ref_type) == (p.ERR_NO_SESSION, p.RECORDS)
        assert queue.depth() == 0

    run_with_gateway(tmp_path, fake_node, body)


def test_garbage_and_bad_messages_are_counted_and_answered(tmp_path, fake_node):
    async def body(queue, sessions, link):
        fake_node.write(b"\x13\x37garbage\x00" + b"\xff" * 2000 + b"\x00")
        fake_node.send({0: 77})
        assert (await fake_node.expect(p.Error)).code == p.ERR_UNKNOWN_TYPE
        fake_node.send({0: p.HELLO, 1: "x"})
        assert (await fake_node.expect(p.Error)).code == p.ERR_MALFORMED
        fake_node.send(b"\xa1")
        assert (await fake_node.expect(p.Error)).code == p.ERR_MALFORMED
        c = link.counters()
        assert c["cobs"] + c["crc"] == 1 and c["oversize"] == 1 and c["malformed"] == 3
        # The link survived all that.
        fake_node.hello()
        await fake_node.expect(p.Ack, seq=0)

    run_with_gateway(tmp_path, fake_node, body)


def test_time_is_resent(tmp_path, fake_node):
    async def body(queue, sessions, link):
        sessions.time_resend_s = 0.2
        task = asyncio.create_task(sessions.resend_time(every_s=0.05))
        try:
            fake_node.hello()
            await fake_node.expect(p.Time)
            await fake_node.expect(p.Ack)
            await fake_node.expect(p.Time, timeout=2)
        finally:
            task.cancel()

    run_with_gateway(tmp_path, fake_node, body)
