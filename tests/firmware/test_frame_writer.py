"""Frames built without a fresh allocation (framing.FrameWriter, proto.records_head): the same
bytes as the allocating builders, checked against CPython's cobs + crc32 + cbor2, and a long
run of ~1 KB frames under the board's heap that allocates no large block."""

from __future__ import annotations

import binascii
import random
import struct

import cbor2
from cobs import cobs
from support.micropython import run_stdout

WRITER = r"""
import binascii
from roadside_node import framing
payloads = [binascii.unhexlify(h) for h in %r]
for chunk in (1, 7, 128, 300):
    w = framing.FrameWriter(chunk=chunk)
    for p in payloads:
        got = []
        w.encode(p, lambda b: got.append(bytes(b)))
        print(chunk, max(len(g) for g in got) <= chunk, binascii.hexlify(b"".join(got)).decode())
"""


def _payloads() -> list[bytes]:
    rnd = random.Random(4)
    out = [b"", b"\x00", b"\x01" * 253, b"\x01" * 254, b"\x01" * 255, b"\x01" * 254 + b"\x00",
           b"\x00" + b"\x02" * 508, bytes(1024), b"\xff" * 1024, b"\xff" * 1020]
    for _ in range(40):
        zeros = rnd.random()
        out.append(bytes(0 if rnd.random() < zeros else rnd.randint(1, 255)
                         for _ in range(rnd.randint(1, 1024))))
    return out


def test_frame_writer_writes_the_frames_of_the_protocol_in_chunks():
    payloads = _payloads()
    lines = run_stdout(WRITER % [p.hex() for p in payloads], heapsize="4m").splitlines()
    assert len(lines) == 4 * len(payloads)
    for i, line in enumerate(lines):
        chunk, fits, frame = line.split()
        p = payloads[i % len(payloads)]
        want = cobs.encode(p + struct.pack("<I", binascii.crc32(p))) + b"\x00"
        assert fits == "True", (chunk, len(p))
        assert bytes.fromhex(frame) == want, (chunk, len(p))


HEAD = r"""
import binascii
from roadside_node import proto
buf = bytearray(1100)
for from_seq in (1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32):
    for count in (0, 1, 23, 24, 32):
        at = end = proto.RECORDS_OVERHEAD
        for i in range(count):
            r = proto.record(from_seq + i, 1795420800 + i, 1, 0, {1: i * 1.5, 3: -i})
            buf[end:end + len(r)] = r
            end += len(r)
        start = proto.records_head(buf, at, from_seq, count)
        print(from_seq, count, binascii.hexlify(buf[start:end]).decode())
"""


def test_records_head_builds_records_in_place():
    for line in run_stdout(HEAD).splitlines():
        from_seq, count, hexed = line.split()
        msg = cbor2.loads(bytes.fromhex(hexed))
        assert msg[0] == 2 and msg[1] == int(from_seq) and len(msg[2]) == int(count)
        assert [r[0] for r in msg[2]] == [int(from_seq) + i for i in range(int(count))]
        assert cbor2.dumps(msg) == bytes.fromhex(hexed)  # shortest-form heads, like records()


SOAK = r"""
import gc, micropython
from roadside_node import framing, proto
w = framing.FrameWriter()
recs = [proto.record(s, 1795420800, 20, 0, {1: "tag%%04d" %% s, 2: s %% 4, 3: -60})
        for s in range(1, 40)]
sink = bytearray(1100)
n = [0]
def write(b):
    k = len(b)
    sink[n[0]:n[0] + k] = b
    n[0] += k
gc.collect()
free0 = gc.mem_free()
worst = 0
for i in range(%d):
    n[0] = 0
    at = end = proto.RECORDS_OVERHEAD
    for r in recs[i %% 8:]:
        if end - at + len(r) > framing.MAX_PAYLOAD - proto.RECORDS_OVERHEAD:
            break
        w.body_mv[end:end + len(r)] = r
        end += len(r)
    start = proto.records_head(w.body, at, 1, 1)
    gc.collect()
    before = gc.mem_free()
    w.send(start, end - start, write)
    worst = max(worst, before - gc.mem_free())
print(worst, n[0])
"""


def test_a_thousand_large_frames_allocate_no_large_block_at_board_heap():
    worst, size = map(int, run_stdout(SOAK % 1000, timeout=120).split())
    assert size > 700  # frames near 1 KB
    assert worst <= 640, f"a frame allocated {worst} bytes"  # a few small slices (128 B here)
