"""Frames: COBS + CRC-32 round trip and a streaming decoder that resynchronises after garbage,
truncation and bit flips, whatever the chunking; checked against a CPython reference."""

from __future__ import annotations

import binascii
import random
import struct
import tempfile

from cobs import cobs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.micropython import run_stdout

MAX_ENCODED = 1040


def frame_of(payload: bytes) -> bytes:
    return cobs.encode(payload + struct.pack("<I", binascii.crc32(payload))) + b"\x00"


def reference(stream: bytes) -> tuple[list[str], dict[str, int]]:
    """What a receiver must yield: PROTOCOL.md section 1, judged chunk by chunk."""
    payloads, counts = [], {"crc": 0, "cobs": 0, "oversize": 0}
    for chunk in stream.split(b"\x00")[:-1]:
        if not chunk:
            continue
        if len(chunk) > MAX_ENCODED:
            counts["oversize"] += 1
            continue
        try:
            body = cobs.decode(chunk)
        except cobs.DecodeError:
            counts["cobs"] += 1
            continue
        if len(body) < 5 or struct.pack("<I", binascii.crc32(body[:-4])) != body[-4:]:
            counts["crc"] += 1
            continue
        payloads.append(body[:-4].hex())
    return payloads, counts


CODE = r"""
import binascii, random
from roadside_node import framing
random.seed(1)
with open(%r) as f:
    for line in f:
        kind, h = line.rstrip("\n").split(" ")
        data = binascii.unhexlify(h)
        if kind == "enc":
            print(binascii.hexlify(framing.encode(data)).decode())
            continue
        d = framing.Deframer()
        out = []
        i = 0
        while i < len(data):
            n = random.randint(1, 300)
            out += d.feed(data[i:i + n])
            i += n
        c = d.counters()
        print(",".join(binascii.hexlify(p).decode() for p in out) or "-",
              c["crc"], c["cobs"], c["oversize"])
"""


def run_lines(lines: list[str]) -> list[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    return run_stdout(CODE % f.name).splitlines()


PAYLOADS = st.binary(min_size=1, max_size=1024)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PAYLOADS, min_size=10, max_size=30))
def test_encode_matches_reference_frames(payloads):
    got = run_lines([f"enc {p.hex()}" for p in payloads])
    assert got == [frame_of(p).hex() for p in payloads]


def damaged_stream(rng: random.Random, payloads: list[bytes]) -> bytes:
    out = bytearray()
    for p in payloads:
        f = bytearray(frame_of(p))
        what = rng.random()
        if what < 0.15:
            f = f[: rng.randint(0, len(f) - 1)]          # truncated (no delimiter)
        elif what < 0.3:
            i = rng.randrange(len(f) - 1)
            f[i] ^= 1 << rng.randrange(8)                # one bit flipped
        elif what < 0.4:
            out += bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))  # garbage
        elif what < 0.45:
            out += b"\x01" * rng.randint(1041, 1500)      # an oversize run
        out += f
    return bytes(out + b"\x00")


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=15),
                min_size=5, max_size=10), st.integers(0, 2**32))
def test_streaming_decoder_resyncs_and_counts(streams, seed):
    rng = random.Random(seed)
    data = [damaged_stream(rng, ps) for ps in streams]
    got = run_lines([f"dec {d.hex()}" for d in data])
    want = []
    for d in data:
        payloads, c = reference(d)
        want.append(f"{','.join(payloads) or '-'} {c['crc']} {c['cobs']} {c['oversize']}")
    assert got == want
