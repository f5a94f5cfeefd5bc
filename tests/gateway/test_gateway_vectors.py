"""The conformance vectors of tests/vectors/frames.json, byte for byte (PROTOCOL.md 1-2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from roadside.gateway import protocol as p

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "frames.json"
GATEWAY_SENT = {p.ACK, p.COMMAND, p.TIME, p.ERROR}

if not VECTORS.exists():
    pytest.skip(f"{VECTORS} not written yet", allow_module_level=True)

DATA = json.loads(VECTORS.read_text())
VALID: list[dict] = DATA["valid"] if isinstance(DATA, dict) else [
    v for v in DATA if "message" in v]
INVALID: list[dict] = DATA["invalid"] if isinstance(DATA, dict) else [
    v for v in DATA if "error" in v]
STREAMS: list[dict] = DATA.get("streams", []) if isinstance(DATA, dict) else []


def from_json(value: Any) -> Any:
    """Object keys made of digits stand for uint keys."""
    if isinstance(value, dict):
        return {int(k) if k.isdigit() else k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def test_limits_match():
    if isinstance(DATA, dict):
        assert (DATA["max_payload"], DATA["max_encoded"]) == (p.MAX_PAYLOAD, p.MAX_ENCODED)


@pytest.mark.parametrize("v", VALID, ids=[v["name"] for v in VALID])
def test_every_frame_decodes_to_its_message(v):
    dec = p.FrameDecoder()
    (payload,) = dec.feed(bytes.fromhex(v["frame"]))
    assert payload.hex() == v["payload"]
    message = p.decode_message(payload)
    assert message.raw == from_json(v["message"])
    assert p.encode_message(message) == payload      # typed round trip, same bytes


@pytest.mark.parametrize("v", [v for v in VALID if v["message"]["0"] in GATEWAY_SENT],
                         ids=lambda v: v["name"])
def test_gateway_sent_messages_encode_to_exactly_the_frame(v):
    message = from_json(v["message"])
    assert p.encode_frame(message).hex() == v["frame"]
    typed = {p.ACK: lambda m: p.Ack(m[1], m.get(2)), p.TIME: lambda m: p.Time(m[1]),
             p.COMMAND: lambda m: p.Command(m[1], m[2], m.get(3)),
             p.ERROR: lambda m: p.Error(m[1], m[2], m.get(3))}[message[0]](message)
    assert p.encode_frame(typed).hex() == v["frame"]


@pytest.mark.parametrize("v", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_frames_are_counted_under_their_reason(v):
    dec = p.FrameDecoder()
    assert dec.feed(bytes.fromhex(v["frame"])) == []
    counts = {"crc": dec.crc, "cobs": dec.cobs, "oversize": dec.oversize}
    assert counts == {k: int(k == v["error"]) for k in counts}
    # and the decoder is in sync again for the next frame
    assert dec.feed(p.encode_frame({0: 3, 1: 1})) == [p.encode_message({0: 3, 1: 1})]


@pytest.mark.parametrize("v", STREAMS, ids=[v["name"] for v in STREAMS])
@pytest.mark.parametrize("chunk", [1, 7, 100000])
def test_streams_resynchronise(v, chunk):
    stream = bytes.fromhex(v["stream"])
    dec = p.FrameDecoder()
    out = []
    for i in range(0, len(stream), chunk):
        out += dec.feed(stream[i:i + chunk])
    assert [x.hex() for x in out] == v["payloads"]
    assert {"crc": dec.crc, "cobs": dec.cobs, "oversize": dec.oversize} == v["counts"]
