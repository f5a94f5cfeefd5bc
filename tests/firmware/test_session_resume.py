"""The node's side of PROTOCOL.md 2.2 rule 7, with the whole simulated node under MicroPython
over a pty and this test as the gateway: a node without saved state says from where its seqs
are unsure, renumbers its held records when told where to resume, and never lets a plain ACK
drop records its unsure counter numbered."""

from __future__ import annotations

from test_session import gw  # noqa: F401  (the fixture)


def unsure_records(gw) -> tuple[dict, dict]:  # noqa: F811
    """Boot, answer HELLO with TIME only (the session is up, nothing acked): the first
    RECORDS, numbered by the unsure counter."""
    gw.start()
    hello = gw.expect(1)
    assert hello[12] == 1 and hello[7] == 1 and hello[9] == 1    # first boot: nothing saved
    gw.send({0: 6, 1: 1795420800123})
    m = gw.expect(2, timeout=10)
    assert m[1] == 1 and m[2][0][0] == 1
    return hello, m


def test_an_unsure_node_renumbers_its_records_above_the_resume_seq(gw):  # noqa: F811
    _, m = unsure_records(gw)
    first = m[2][0]
    gw.send({0: 3, 1: 40, 2: 50})                                 # seqs up to 49 are taken
    while True:                                                   # frames already in flight
        m = gw.expect(2)
        if m[1] == 50:
            break
    assert m[2][0][0] == 50 and m[2][0][1:] == first[1:]          # the same record, renumbered
    gw.send({0: 4, 1: 9, 2: "info"})
    info = gw.expect(5)[3]
    assert info["next_seq"] > 50 and info["journal_rereads"] == 0
    gw.kill()
    gw.other = []
    gw.start()                                                    # the jump was saved
    hello = gw.expect(1)
    assert 12 not in hello and hello[9] == 50 and hello[7] > 50


def test_a_plain_ack_to_an_unsure_node_never_drops_what_it_numbered(gw):  # noqa: F811
    unsure_records(gw)
    gw.send({0: 3, 1: 99})          # no resume: the numbering stands; 99 acks none of them
    gw.send({0: 4, 1: 9, 2: "info"})
    info = gw.expect(5)[3]
    assert info["journal_records"] >= 1
    gw.kill()
    gw.other = []
    gw.start()
    hello = gw.expect(1)
    assert 12 not in hello and hello[9] == 1                      # confirmed, all still held
