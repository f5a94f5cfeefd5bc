"""Hypothesis fuzzing of the gateway's path from bytes to stored records and command replies:
frames (valid messages with hostile values, mutated ones, garbage, cut and split chunks) go
through a link's frame decoder into the real session manager, the real SQLite queue and the
real Commander. Nothing may raise; every answer is a valid frame; what is stored is what was
ACKed (checked again from the file); only the port's first node id is ever stored; a command's
result is always JSON. The long run (1,000,000 frames) is bench/bench_fuzz_gateway.py."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from roadside.gateway import protocol as p
from roadside.gateway.commands import Commander, CommandError
from roadside.gateway.links.sim import SimLink
from roadside.gateway.queue import Queue
from roadside.gateway.session import SessionManager

NODE = "wl-0001"
ints = st.one_of(st.integers(0, 40), st.integers(-(1 << 70), 1 << 70),
                 st.sampled_from([(1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 64, -1]))
texts = st.one_of(st.sampled_from([NODE, "wl-0002", "water", "toll", ""]),
                  st.text(max_size=30))
scalars = st.one_of(ints, st.floats(), texts, st.booleans(), st.none(),
                    st.binary(max_size=16))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4)
                      | st.dictionaries(st.one_of(ints, texts), c, max_size=4), max_leaves=24)
bodies = st.dictionaries(ints, scalars, max_size=5)
good_records = st.lists(st.integers(1, 60), min_size=1, max_size=8).map(
    lambda seqs: [[s, 1_700_000_000 + s, p.KIND_ALARM if s % 3 else p.KIND_LEVEL, s % 4,
                   {1: "alarm" if s % 3 else 10.0 + s, 2: 50.5}] for s in sorted(set(seqs))])
any_records = st.lists(st.one_of(st.tuples(ints, ints, ints, ints, bodies).map(list), values),
                       max_size=6)
messages = st.one_of(
    st.builds(lambda n, r, ns, fu: {0: p.HELLO, 1: n, 2: r, 7: ns, 9: fu},
              texts, texts, ints, ints),
    st.builds(lambda f, rs: {0: p.RECORDS, 1: f, 2: rs}, st.integers(1, 60), good_records),
    st.builds(lambda f, rs: {0: p.RECORDS, 1: f, 2: rs}, ints, any_records),
    st.builds(lambda i, ok, res: {0: p.REPLY, 1: i, 2: ok, 3: res},
              st.one_of(st.just(1), ints), st.booleans(), values),
    st.dictionaries(ints, values, max_size=5),
)
# Hostile payloads found by hand (issue 10): cyclic and shared CBOR, deep nesting.
KNOWN = [bytes([0xA4, 0x00, 0x05, 0x01, 0x01, 0x02, 0xF5, 0x03, 0xD8, 0x1C, 0x81, 0xD8, 0x1D,
                0x00]),
         b"\xa2\x00\x05\x01" + b"\x81" * 900 + b"\x00",
         cbor2.dumps({0: p.RECORDS, 1: 1, 2: [[1 << 63, 1, 1, 0, {}]]})]


@st.composite
def payloads(draw: Any) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return bytes(draw(st.binary(max_size=80)))
    if kind == 1:
        return bytes(draw(st.sampled_from(KNOWN)))
    raw = bytearray(cbor2.dumps(draw(messages)))
    if kind == 2 and raw:                       # flip bytes of a valid message
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] = draw(st.integers(0, 255))
    if kind == 3:                               # cut it short
        raw = raw[:draw(st.integers(0, len(raw)))]
    return bytes(raw)


@st.composite
def streams(draw: Any) -> list[bytes]:
    """Bytes on the wire: frames of the payloads, sometimes garbage between, cut anywhere."""
    out = bytearray(p.encode_frame({0: p.HELLO, 1: NODE, 2: "water", 7: 1, 9: 1}))
    for payload in draw(st.lists(payloads(), max_size=12)):
        if len(payload) <= p.MAX_PAYLOAD:
            out += p.encode_frame(payload)
        if draw(st.integers(0, 7)) == 0:
            out += draw(st.binary(max_size=20))
    cuts = sorted(draw(st.lists(st.integers(0, len(out)), max_size=4)))
    return [bytes(out[a:b]) for a, b in zip([0, *cuts], [*cuts, len(out)], strict=True)]


async def _drive(tmp: Path, chunks: list[bytes]) -> None:
    queue = Queue(tmp / "q.sqlite", "gw", "s")
    sessions = SessionManager(queue)
    commander = Commander(sessions, tmp / "commands.sqlite", attempt_timeout_s=0.01,
                          attempts=1)
    link = SimLink("/dev/ttyFUZZ")
    await link.open()
    acks: list[int] = []
    try:
        command: asyncio.Task[Any] | None = None
        for chunk in chunks:
            link.feed(chunk)
            while not link.incoming.empty():
                await sessions.handle(link, link.incoming.get_nowait())   # must not raise
            if command is None and NODE in sessions.nodes and sessions.sessions:
                command = asyncio.create_task(commander.run(NODE, "info"))
                await asyncio.sleep(0)
        while not link.sent.empty():
            for payload in link._node_decoder.feed(link.sent.get_nowait()):
                msg = p.decode_message(payload)          # every answer is a valid message
                if isinstance(msg, p.Ack):
                    acks.append(msg.seq)
        if command is not None:
            try:
                result = await command
                json.dumps(result.to_json())             # what the command API answers
            except CommandError:
                pass
        assert set(queue.nodes) <= {NODE}, queue.nodes   # only the port's first id
        assert acks == sorted(acks) and all(0 <= a <= p.MAX_UINT for a in acks)
        if acks:
            assert queue.ack_of(NODE) == acks[-1]
        mirror = {n: (i.ack, i.stored) for n, i in queue.nodes.items()}
        depth = queue.depth()
    finally:
        commander.close()
        queue.close()
    again = Queue(tmp / "q.sqlite", "gw", "s")          # the file says what the ACKs said
    try:
        assert {n: (i.ack, i.stored) for n, i in again.nodes.items()} == mirror
        assert again.depth() == depth
    finally:
        again.close()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(streams())
def test_fuzzed_bytes_never_raise_and_store_only_what_was_acked(chunks: list[bytes]) -> None:
    # /dev/shm when there is one: the fuzzing is about the code, not the disk's fsync
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as tmp:
        asyncio.run(asyncio.wait_for(_drive(Path(tmp), chunks), 30))
