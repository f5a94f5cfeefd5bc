"""Framing and message validation (PROTOCOL.md sections 1 and 2)."""

from __future__ import annotations

import binascii

import cbor2
import pytest
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st
from roadside.gateway import protocol as p
from roadside.gateway.errors import ProtocolError

payloads = st.binary(min_size=1, max_size=p.MAX_PAYLOAD)


@given(st.lists(payloads, min_size=1, max_size=5), st.integers(1, 64))
@settings(max_examples=150, deadline=None)
def test_frames_round_trip_in_any_chunking(items, chunk):
    stream = b"".join(p.encode_frame(x) for x in items)
    assert stream.count(0) == len(items)
    dec = p.FrameDecoder()
    out = []
    for i in range(0, len(stream), chunk):
        out += dec.feed(stream[i:i + chunk])
    assert out == items
    assert dec.frames == len(items) and dec.crc == dec.cobs == dec.oversize == 0


@given(st.binary(max_size=3000), payloads)
@settings(max_examples=200, deadline=None)
def test_decoder_resynchronises_after_garbage_and_never_raises(garbage, payload):
    dec = p.FrameDecoder()
    dec.feed(garbage)
    # Whatever the garbage left pending, the next delimiter ends it; the frame after is whole.
    assert dec.feed(b"\x00" + p.encode_frame(payload)) == [payload]


def test_frame_layout_is_cobs_of_payload_and_crc_le():
    frame = p.encode_frame({0: p.ACK, 1: 5})
    payload = cbor2.dumps({0: 3, 1: 5})
    assert frame[-1] == 0
    assert cobs.decode(frame[:-1]) == payload + binascii.crc32(payload).to_bytes(4, "little")


def test_bad_frames_are_counted_by_reason():
    dec = p.FrameDecoder()
    good = p.encode_frame({0: p.ACK, 1: 1})
    flipped = bytearray(good)
    flipped[3] ^= 0x01
    assert dec.feed(bytes(flipped)) == []
    assert dec.crc == 1
    assert dec.feed(b"\x05ab\x00") == []          # length code beyond the frame
    assert dec.cobs == 1
    assert dec.feed(cobs.encode(b"ab") + b"\x00") == []   # shorter than 5 bytes
    assert dec.crc == 2
    assert dec.feed(b"\x01" * (p.MAX_ENCODED + 500)) == []
    assert dec.feed(b"\x01" * 10 + b"\x00" + good) == [cbor2.dumps({0: 3, 1: 1})]
    assert dec.oversize == 1
    assert dec.feed(b"\x00\x00\x00") == []        # empty frames are flushes, not errors
    assert (dec.crc, dec.cobs, dec.oversize, dec.frames) == (2, 1, 1, 1)


def test_encoding_is_ascending_keys_shortest_ints_float64():
    msg = {6: 1, 0: p.ERROR, 2: "x", 1: 300}
    assert p.encode_message(msg) == cbor2.dumps({0: 7, 1: 300, 2: "x", 6: 1})
    assert p.encode_message(p.Time(1_700_000_000_123)) == bytes.fromhex(
        "a2000601" "1b" + (1_700_000_000_123).to_bytes(8, "big").hex())
    assert cbor2.dumps(1.5)[0] == 0xFB


def msg(m):
    return cbor2.dumps(m)


HELLO = {0: 1, 1: "wl-0001", 2: "water", 3: "0.1", 4: "sim", 5: 2, 6: "power_on", 7: 10,
         8: 1, 9: 4}


def test_decode_hello_and_records():
    h = p.decode_message(msg({**HELLO, 99: "future key"}))
    assert isinstance(h, p.Hello)
    assert (h.node, h.role, h.next_seq, h.first_unacked, h.boot_count) == (
        "wl-0001", "water", 10, 4, 2)
    r = p.decode_message(msg({0: 2, 1: 4, 2: [[4, 100, 1, 1, {1: 1.5, 3: 7}],
                                              [5, 101, 2, 2, {1: "alarm"}]]}))
    assert isinstance(r, p.Records)
    assert r.from_seq == 4 and [x.seq for x in r.records] == [4, 5]
    assert not r.records[0].synced and r.records[1].priority
    assert p.decode_message(msg(r.to_map())) == r


@pytest.mark.parametrize("m, code", [
    ({0: 42}, p.ERR_UNKNOWN_TYPE),
    ({1: 2}, p.ERR_MALFORMED),
    ({0: "1"}, p.ERR_MALFORMED),
    ({k: v for k, v in HELLO.items() if k != 1}, p.ERR_MALFORMED),
    ({**HELLO, 7: -1}, p.ERR_MALFORMED),
    ({**HELLO, 2: 5}, p.ERR_MALFORMED),
    ({0: 2, 1: 1}, p.ERR_MALFORMED),
    ({0: 2, 1: 1, 2: [[0, 1, 1, 0, {}]]}, p.ERR_MALFORMED),
    ({0: 2, 1: 1, 2: [[1, 1, 1, 0]]}, p.ERR_MALFORMED),
    ({0: 2, 1: 1, 2: [[1, 1, 1, True, {}]]}, p.ERR_MALFORMED),
    ({0: 2, 1: 1, 2: [[1, 1, 1, 0, {"a": 1}]]}, p.ERR_MALFORMED),
    ({0: 2, 1: 1, 2: [[1, 1, 1, 0, {1: [1]}]]}, p.ERR_MALFORMED),
    ({0: 5, 1: 1}, p.ERR_MALFORMED),
    ([0, 1], p.ERR_MALFORMED),
])
def test_decode_rejects_with_the_error_code_to_answer(m, code):
    with pytest.raises(ProtocolError) as exc:
        p.decode_message(msg(m))
    assert exc.value.code == code


@pytest.mark.parametrize("payload", [b"\xff", b"\xa1", msg({0: 3, 1: 1}) + b"\x00", b""])
def test_not_cbor_or_trailing_bytes_is_malformed(payload):
    with pytest.raises(ProtocolError) as exc:
        p.decode_message(payload)
    assert exc.value.code == p.ERR_MALFORMED


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_decode_message_only_ever_raises_protocol_error(data):
    try:
        p.decode_message(data)
    except ProtocolError as exc:
        assert exc.code in (p.ERR_UNKNOWN_TYPE, p.ERR_MALFORMED)


def test_body_names_for_the_uplink():
    assert p.body_to_data(1, {3: 1200, 1: 12.5}) == {"level_cm": 12.5, "distance_mm": 1200}
    assert p.body_to_data(2, {1: "alert", 3: "normal"}) == {"state": "alert",
                                                            "previous": "normal"}
    assert p.kind_name(3) == "health" and p.kind_name(14) == "kind-14"   # still reserved
    assert (p.kind_name(11), p.kind_name(20)) == ("fault", "transaction")
    assert p.body_to_data(20, {1: "E2", 2: 3, 6: -45}) == {"tag": "E2", "lane": 3,
                                                           "rssi_dbm": -45}
