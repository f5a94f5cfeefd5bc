"""A node that lost its counter is told where to continue (ACK key 2, PROTOCOL.md 2.2), over
a real pty and a real SQLite queue; a node replaying after a power cut is not moved."""

from __future__ import annotations

from roadside.gateway import protocol as p
from test_gateway_session import run_with_gateway


def unsure_hello(node, next_seq: int, first_unacked: int, unsure: int) -> None:
    node.send({0: p.HELLO, 1: "wl-0001", 2: "water", 3: "test", 4: "sim", 5: 1,
               6: "power_on", 7: next_seq, 8: 1, 9: first_unacked, 12: unsure})


def test_an_unsure_node_below_what_is_stored_is_told_to_resume_above_it(tmp_path, fake_node):
    async def body(queue, sessions, link):
        fake_node.hello()
        fake_node.records([1, 2, 3, 4, 5])
        await fake_node.expect(p.Ack, seq=5)
        # state lost, three new records journaled as 1..3 before the gateway answered
        unsure_hello(fake_node, next_seq=4, first_unacked=1, unsure=1)
        ack = await fake_node.expect(p.Ack)
        assert (ack.seq, ack.resume) == (5, 6)
        # sent before the node saw that ACK: not stored (seqs of a lost counter), told again
        fake_node.records([1, 2, 3])
        ack = await fake_node.expect(p.Ack)
        assert (ack.seq, ack.resume) == (5, 6)
        assert queue.depth() == 5 and queue.nodes["wl-0001"].duplicates == 0
        # the node renumbered them 6..8: all stored, none taken for a duplicate
        fake_node.records([6, 7, 8])
        ack = await fake_node.expect(p.Ack)
        assert (ack.seq, ack.resume) == (8, None)
        assert queue.depth() == 8 and queue.nodes["wl-0001"].duplicates == 0
        # a repeated answer to the same HELLO names the same place until 6.. are stored;
        # after that a HELLO still unsure from 1 is moved above them
        unsure_hello(fake_node, next_seq=4, first_unacked=1, unsure=1)
        assert (await fake_node.expect(p.Ack)).resume == 9

    run_with_gateway(tmp_path, fake_node, body)


def test_a_record_held_beyond_a_gap_counts_as_stored(tmp_path, fake_node):
    async def body(queue, sessions, link):
        fake_node.hello()
        fake_node.records([1, 2])
        await fake_node.expect(p.Ack, seq=2)
        fake_node.records([4, 5], from_seq=1)            # 3 lost on the line: ACK stays 2
        await fake_node.expect(p.Ack, seq=2)
        unsure_hello(fake_node, next_seq=3, first_unacked=3, unsure=3)
        ack = await fake_node.expect(p.Ack)
        assert ack.resume == 6
        # records 3..5 by the lost counter would have filled the gap with other records
        fake_node.records([3, 4, 5], from_seq=3)
        assert (await fake_node.expect(p.Ack)).resume == 6
        assert queue.ack_of("wl-0001") == 2 and queue.depth() == 4

    run_with_gateway(tmp_path, fake_node, body)


def test_an_unsure_node_above_what_is_stored_is_not_moved(tmp_path, fake_node):
    async def body(queue, sessions, link):
        fake_node.hello()
        fake_node.records([1, 2, 3])
        await fake_node.expect(p.Ack, seq=3)
        unsure_hello(fake_node, next_seq=4, first_unacked=4, unsure=4)
        ack = await fake_node.expect(p.Ack)
        assert (ack.seq, ack.resume) == (3, None)

    run_with_gateway(tmp_path, fake_node, body)


def test_a_node_replaying_after_a_power_cut_is_not_moved(tmp_path, fake_node):
    """The gateway stored 1..5 but the node never saw the ACK: it replays them from its
    journal. Its next_seq is above them (it never gives a seq it has not journaled), so its
    counter is fine: its resend is recognised as duplicates, nothing renumbered."""
    async def body(queue, sessions, link):
        fake_node.hello()
        fake_node.records([1, 2, 3, 4, 5])
        await fake_node.expect(p.Ack, seq=5)
        fake_node.hello(next_seq=6, first_unacked=1)
        ack = await fake_node.expect(p.Ack)
        assert (ack.seq, ack.resume) == (5, None)
        fake_node.records([1, 2, 3, 4, 5])
        await fake_node.expect(p.Ack, seq=5)
        assert queue.depth() == 5 and queue.nodes["wl-0001"].duplicates == 5

    run_with_gateway(tmp_path, fake_node, body)


def test_a_node_whose_next_seq_is_not_above_what_is_stored_is_moved(tmp_path, fake_node):
    """No key 12 (a counter lost without the node knowing): next_seq not above the stored
    seqs means its next records would be dropped as duplicates."""
    async def body(queue, sessions, link):
        fake_node.hello()
        fake_node.records([1, 2, 3, 4, 5])
        await fake_node.expect(p.Ack, seq=5)
        fake_node.hello(next_seq=5, first_unacked=5)
        ack = await fake_node.expect(p.Ack)
        assert ack.resume == 6

    run_with_gateway(tmp_path, fake_node, body)


def test_ack_resume_round_trips_and_is_optional():
    assert p.decode_message(p.encode_message(p.Ack(5, 6))) == p.Ack(5, 6)
    assert p.encode_message(p.Ack(5)) == bytes.fromhex("a2000301" "05")
    assert p.decode_message(p.encode_message(p.Ack(5))).resume is None
    hello = p.Hello("wl-0001", "water", 4, 1, unsure=1)
    assert p.decode_message(p.encode_message(hello)).unsure == 1
