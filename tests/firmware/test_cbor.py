"""The firmware's CBOR codec against cbor2, both ways, under MicroPython (one process per
hypothesis example, each example a batch of many values)."""

from __future__ import annotations

import math
import tempfile

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.micropython import run_stdout

INT64 = st.one_of(st.integers(-(2**64), 2**64 - 1),
                  st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32,
                                   2**64 - 1, -1, -24, -25, -256, -257, -(2**32), -(2**64)]))
FLOATS = st.floats(allow_nan=False, width=64)
SCALARS = st.one_of(INT64, st.text(max_size=20), st.binary(max_size=20), st.booleans(),
                    st.none(), FLOATS)
KEYS = st.one_of(st.integers(0, 2**32), st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(KEYS, inner, max_size=5)), max_leaves=12)


def key_order(k):
    if isinstance(k, int):
        return (0, k, b"")
    e = k.encode()
    return (1, len(e), e)


def ordered(v):
    """The same value with every map's keys in the protocol's ascending order."""
    if isinstance(v, dict):
        return {k: ordered(v[k]) for k in sorted(v, key=key_order)}
    if isinstance(v, list):
        return [ordered(x) for x in v]
    return v


CODE = r"""
import binascii
from roadside_node import cbor
with open(%r) as f:
    for line in f:
        kind, h = line.rstrip("\n").split(" ")
        data = binascii.unhexlify(h)
        try:
            v = cbor.loads(data)
            print(binascii.hexlify(cbor.dumps(v)).decode())
        except cbor.CBORError as e:
            print("error")
"""


def roundtrip(encodings: list[bytes]) -> list[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        for e in encodings:
            f.write(f"x {e.hex()}\n")
    return run_stdout(CODE % f.name).split()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(VALUES, min_size=30, max_size=60))
def test_decode_cbor2_and_reencode_byte_exact(values):
    values = [ordered(v) for v in values]
    want = [cbor2.dumps(v) for v in values]
    got = roundtrip(want)
    assert got == [w.hex() for w in want]
    assert [cbor2.loads(bytes.fromhex(g)) for g in got] == values


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(width=32, allow_nan=False), min_size=20, max_size=40))
def test_shorter_floats_decode_and_come_back_as_float64(floats):
    # canonical=True makes cbor2 pick float16/float32 when exact
    values = floats + [0.5, 1.0, -2.0, 65504.0, 5.960464477539063e-08, math.inf, -math.inf]
    got = roundtrip([cbor2.dumps(v, canonical=True) for v in values])
    assert got == [cbor2.dumps(v).hex() for v in values]


def test_bad_input_raises_cbor_error_never_crashes():
    bad = [b"", b"\x18", b"\x62a", b"\x82\x01", b"\x9f\x01\xff", b"\xc1\x01", b"\x01\x02",
           b"\x62\xff\xfe", b"\xa1\x80\x01", b"\xf8\x20", b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",
           b"\x81" * 40 + b"\x01", b"\x5a\xff\xff\xff\xff"]
    assert roundtrip(bad) == ["error"] * len(bad)
