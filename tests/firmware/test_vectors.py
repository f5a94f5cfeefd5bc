"""The firmware against the protocol's conformance vectors (tests/vectors/frames.json), under
MicroPython: every valid frame decodes to its message, every message the node sends encodes
to exactly the vector's bytes, invalid frames and the resync stream are counted by reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.micropython import run_stdout

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "frames.json"
NODE_SENDS = {1, 2, 5, 7}

CODE = r"""
import json, binascii
from roadside_node import cbor, framing, proto
V = json.load(open(%r))

def from_json(v):
    if isinstance(v, dict):
        return {(int(k) if k.isdigit() else k): from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_json(x) for x in v]
    return v

def build(m):
    t = m[0]
    if t == 1:
        return proto.hello(m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[9], m.get(10),
                           m.get(11, False), m.get(12, 0))
    if t == 2:
        return proto.records(m[1], [proto.record(r[0], r[1], r[2], r[3], r[4]) for r in m[2]])
    if t == 5:
        return proto.reply(m[1], m[2], m.get(3), m.get(4))
    if t == 7:
        return proto.error(m[1], m[2], m.get(3))

for v in V["valid"]:
    frame = binascii.unhexlify(v["frame"])
    msg = from_json(v["message"])
    d = framing.Deframer()
    got = d.feed(frame)
    payload = binascii.unhexlify(v["payload"])
    ok_dec = len(got) == 1 and got[0] == payload and cbor.loads(got[0]) == msg
    ok_parse = "-"
    if v["type"] in (3, 4, 6, 7):
        t, m = proto.parse(got[0])
        ok_parse = t == v["type"] and m == msg
    ok_enc = "-"
    if v["type"] in (1, 2, 5, 7):
        ok_enc = framing.encode(build(msg)) == frame
    ok_generic = framing.encode(cbor.dumps(msg)) == frame
    print("valid", v["name"], ok_dec, ok_parse, ok_enc, ok_generic)

for v in V["invalid"]:
    d = framing.Deframer()
    got = d.feed(binascii.unhexlify(v["frame"]))
    c = d.counters()
    print("invalid", v["name"], len(got) == 0 and c[v["error"]] == 1 and
          c["crc"] + c["cobs"] + c["oversize"] == 1)

for s in V["streams"]:
    data = binascii.unhexlify(s["stream"])
    for step in (1, 7, 64, len(data)):
        d = framing.Deframer()
        out = []
        for i in range(0, len(data), step):
            out += d.feed(data[i:i + step])
        c = d.counters()
        ok = [binascii.hexlify(p).decode() for p in out] == s["payloads"] and all(
            c[k] == n for k, n in s["counts"].items())
        print("stream", s["name"], step, ok)
"""


@pytest.fixture(scope="module")
def results() -> dict[str, list[str]]:
    if not VECTORS.exists():
        pytest.skip("tests/vectors/frames.json is not there yet")
    out = run_stdout(CODE % str(VECTORS))
    lines: dict[str, list[str]] = {}
    for line in out.splitlines():
        kind, name, *rest = line.split()
        lines.setdefault(kind, []).append(f"{name} {' '.join(rest)}")
    return lines


def test_every_valid_frame_decodes_and_node_messages_encode_byte_exact(results):
    vectors = json.loads(VECTORS.read_text())["valid"]
    assert len(results["valid"]) == len(vectors)
    bad = [r for r in results["valid"] if "False" in r.split()]
    assert bad == [], bad
    assert {v["type"] for v in vectors} >= NODE_SENDS


def test_invalid_frames_are_counted_under_their_reason(results):
    assert results["invalid"] and all(r.endswith("True") for r in results["invalid"]), results


def test_streams_resync_whatever_the_chunking(results):
    assert results["stream"] and all(r.endswith("True") for r in results["stream"]), results
