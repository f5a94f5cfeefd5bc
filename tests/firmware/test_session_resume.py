"""The node's side of PROTOCOL.md 2.2 rule 7, with the whole simulated node under MicroPython
over a pty and this test as the gateway: a node without saved state says from where its seqs
are unsure, sends no records until the gateway answered, and renumbers its held records when
told where to resume."""

from __future__ import annotations

import time

from test_session import gw  # noqa: F401  (the fixture)


def hello_again_with_records(gw) -> dict:  # noqa: F811
    """Repeated HELLOs (every 3 s while unsure) until the node holds records; never RECORDS."""
    deadline = time.monotonic() + 20
    while True:
        hello = gw.expect(1, timeout=6)
        assert not [m for m in gw.other if m[0] == 2], "RECORDS sent while unsure"
        if hello[7] > 1 or time.monotonic() > deadline:
            return hello


def test_an_unsure_node_waits_then_renumbers_above_the_resume_seq(gw):  # noqa: F811
    gw.start()
    hello = gw.expect(1)
    assert hello[12] == 1 and hello[7] == 1 and hello[9] == 1    # first boot: nothing saved
    gw.send({0: 6, 1: 1795420800123})                             # TIME alone: not the answer
    hello = hello_again_with_records(gw)
    held = hello[7] - 1
    assert held >= 1 and hello[12] == 1
    gw.send({0: 3, 1: 40, 2: 50})                                 # seqs up to 49 are taken
    m = gw.expect(2)
    assert m[1] == 50 and [r[0] for r in m[2]][:held] == list(range(50, 50 + held))
    gw.send({0: 4, 1: 9, 2: "info"})
    info = gw.expect(5)[3]
    assert info["next_seq"] >= 50 + held and info["journal_rereads"] == 0


def test_a_plain_ack_to_an_unsure_hello_never_drops_unsent_records(gw):  # noqa: F811
    gw.start()
    gw.expect(1)
    gw.send({0: 6, 1: 1795420800123})
    hello = hello_again_with_records(gw)
    assert hello[7] > 1
    gw.send({0: 3, 1: 99})          # no resume: the numbering stands; 99 acks none of them
    m = gw.expect(2)
    assert m[1] == 1 and m[2][0][0] == 1
