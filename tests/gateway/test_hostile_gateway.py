"""Hostile input at the gateway core (issue 10, "The gateway"): node ids bound to links, seq
jumps refused, REPLYs matched on link + node + id, integer ranges, a failing message rolled
back alone in the group commit, cyclic CBOR, a BLE counter beyond 64 bits, bounded node ids.
Real SQLite queue, real session manager; links are real ptys or the in-memory SimLink."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import cbor2
import pytest
from roadside.gateway import ble_auth
from roadside.gateway import protocol as p
from roadside.gateway.commands import Commander, CommandError
from roadside.gateway.config import ConfigError, parse
from roadside.gateway.errors import ProtocolError, QueueError
from roadside.gateway.links.ble import BleCentral, BleLink
from roadside.gateway.links.serial import SerialLink
from roadside.gateway.links.sim import SimLink
from roadside.gateway.queue import Queue
from roadside.gateway.session import SessionManager

TIMEOUT_S = 10.0
BIG = 1 << 63


def hello(node: str = "wl-0001", next_seq: int = 1, first_unacked: int = 1) -> dict[int, Any]:
    return {0: p.HELLO, 1: node, 2: "water", 3: "test", 4: "sim", 5: 1, 6: "power_on",
            7: next_seq, 8: 1, 9: first_unacked}


def records(seqs: list[int], from_seq: int | None = None) -> dict[int, Any]:
    return {0: p.RECORDS, 1: seqs[0] if from_seq is None else from_seq,
            2: [[s, 1_700_000_000 + s, p.KIND_ALARM, 0, {1: "alarm", 2: 50.0 + s}]
                for s in seqs]}


class Gateway:
    """A session manager over a real queue, with SimLinks served like the daemon does."""

    def __init__(self, tmp: Path, **kwargs: Any) -> None:
        self.queue = Queue(tmp / "q.sqlite", "gw", "s")
        self.sessions = SessionManager(self.queue, **kwargs)
        self.tasks: list[asyncio.Task[None]] = []

    async def link(self, port: str, node: str | None = None) -> SimLink:
        link = SimLink(port)
        link.bound_node = node
        await link.open()
        self.tasks.append(asyncio.create_task(self.sessions.serve(link)))
        return link

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.queue.close()


async def expect(link: SimLink, cls: type, **fields: Any) -> Any:
    """The next message of type `cls` the gateway sent on `link` (others are skipped)."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            m = await link.receive()
            if isinstance(m, cls) and all(getattr(m, k) == v for k, v in fields.items()):
                return m


def run(tmp: Path, body: Any, **kwargs: Any) -> None:
    async def main() -> None:
        gw = Gateway(tmp, **kwargs)
        try:
            await asyncio.wait_for(body(gw), 30)
        finally:
            await gw.close()
    asyncio.run(main())


# -- node identity bound to a link ----------------------------------------------------------


def test_other_id_on_a_served_port_is_refused_until_accepted(tmp_path: Path) -> None:
    async def body(gw: Gateway) -> None:
        a = await gw.link("/dev/ttyUSB0")
        a.feed(p.encode_frame(hello("wl-0001")))
        await expect(a, p.Ack, seq=0)
        a.feed(p.encode_frame(records([1, 2])))
        await expect(a, p.Ack, seq=2)
        # Another device on the same cable claims another node and sends a fake alarm.
        a.feed(p.encode_frame(hello("wl-0002")))
        err = await expect(a, p.Error)
        assert err.code == p.ERR_BUSY and "accept" in err.message and "wl-0001" in err.message
        a.feed(p.encode_frame(records([1])))
        assert (await expect(a, p.Error)).code == p.ERR_NO_SESSION   # stored as nobody's
        assert "wl-0002" not in gw.queue.nodes and "wl-0002" not in gw.sessions.nodes
        assert gw.sessions.refused["identity"] == 1
        (alarm,) = gw.sessions.identity_alarms.values()
        assert (alarm.port, alarm.node, alarm.reason) == ("/dev/ttyUSB0", "wl-0002", "identity")
        a.feed(p.encode_frame(hello("wl-0002")))        # the node retries: counted, not logged
        await expect(a, p.Error)
        assert alarm.count == 2
        # The operator accepts the replaced device: its next HELLO is taken.
        gw.sessions.accept("/dev/ttyUSB0", "wl-0002")
        assert not gw.sessions.identity_alarms
        a.feed(p.encode_frame(hello("wl-0002")))
        await expect(a, p.Ack, seq=0)
        assert gw.queue.ack_of("wl-0001") == 2

    run(tmp_path, body)


def test_a_restarted_gateway_remembers_which_node_a_port_served(tmp_path: Path) -> None:
    """A port's node is kept in the queue file: after a restart the first HELLO on that port
    cannot claim another id (before, a restart forgot every learned port); an operator's
    acceptance is kept the same way."""
    async def life(expect_refused: str | None, accept: str | None, then: str) -> None:
        gw = Gateway(tmp_path)
        try:
            a = await gw.link("/dev/ttyUSB0")
            if expect_refused is not None:
                a.feed(p.encode_frame(hello(expect_refused)))
                err = await expect(a, p.Error)
                assert err.code == p.ERR_BUSY and "accept" in err.message, err
            if accept is not None:
                gw.sessions.accept("/dev/ttyUSB0", accept)
            a.feed(p.encode_frame(hello(then)))
            await expect(a, p.Ack, seq=0)
        finally:
            await gw.close()

    async def main() -> None:
        await asyncio.wait_for(life(None, None, "wl-0001"), 30)        # learned
        await asyncio.wait_for(life("wl-0002", None, "wl-0001"), 30)   # restart: still wl-0001
        await asyncio.wait_for(life("wl-0002", "wl-0002", "wl-0002"), 30)   # accepted
        await asyncio.wait_for(life("wl-0001", None, "wl-0002"), 30)   # restart: kept

    asyncio.run(main())


def test_pinned_serial_port_serves_its_node_only(tmp_path: Path, fake_node: Any) -> None:
    """A real pty with `node` pinned: the first HELLO with another id is refused already."""
    async def main() -> None:
        queue = Queue(tmp_path / "q.sqlite", "gw", "s")
        sessions = SessionManager(queue)
        link = SerialLink(fake_node.path, 115200, retry_s=0.1, node="wl-0001")
        await link.open()
        served = asyncio.create_task(sessions.serve(link))
        try:
            async with asyncio.timeout(TIMEOUT_S):
                while not link.is_open:
                    await asyncio.sleep(0.01)
            fake_node.hello("wl-0007")
            err = await fake_node.expect(p.Error, timeout=TIMEOUT_S)
            assert err.code == p.ERR_BUSY and "bound to wl-0001" in err.message
            with pytest.raises(ValueError, match="gateway.toml"):
                sessions.accept(fake_node.path, "wl-0007")
            fake_node.hello("wl-0001")
            await fake_node.expect(p.Ack, timeout=TIMEOUT_S, seq=0)
        finally:
            served.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await served
            await link.close()
            queue.close()

    asyncio.run(main())


def test_pinned_or_ble_node_is_not_served_by_another_link(tmp_path: Path) -> None:
    async def body(gw: Gateway) -> None:
        await gw.link("ble:wl-0001", node="wl-0001")
        rogue = await gw.link("/dev/ttyUSB1")
        rogue.feed(p.encode_frame(hello("wl-0001")))
        err = await expect(rogue, p.Error)
        assert "bound to ble:wl-0001" in err.message
        assert "wl-0001" not in gw.queue.nodes

    run(tmp_path, body)


def test_ble_link_authenticated_as_one_node_cannot_hello_as_another(tmp_path: Path) -> None:
    """The real BleLink: after authenticating as wl-0001 its sealed HELLO says wl-0002."""
    async def body(gw: Gateway) -> None:
        link = BleLink("wl-0001", b"\x01" * 32, BleCentral())
        gw.sessions.register(link)
        link.session.auth = ble_auth.GatewayAuth(link.secret, "wl-0001")
        link.session.auth.channel = ble_auth.Channel(b"k" * 32)
        link.session.authed = True
        node_side = ble_auth.Channel(b"k" * 32, send_dir=ble_auth.DIR_NODE,
                                     recv_dir=ble_auth.DIR_GATEWAY)
        sealed = node_side.seal(p.encode_message(hello("wl-0002")))
        link.session.on_notify(None, bytearray(p.encode_frame(sealed)))
        await gw.sessions.handle(link, link.incoming.get_nowait())
        assert gw.sessions.refused["identity"] == 1
        assert "wl-0002" not in gw.queue.nodes and link.port not in gw.sessions.sessions
        out = p.FrameDecoder().feed(link._out.get_nowait())
        err = p.decode_message(node_side.open(cbor2.loads(out[0])))
        assert isinstance(err, p.Error) and "bound to wl-0001" in err.message

    run(tmp_path, body)


def test_node_live_on_one_port_is_not_taken_over_from_another(tmp_path: Path) -> None:
    async def body(gw: Gateway) -> None:
        a = await gw.link("/dev/ttyUSB0")
        b = await gw.link("/dev/ttyUSB1")
        a.feed(p.encode_frame(hello("wl-0001")))
        await expect(a, p.Ack, seq=0)
        b.feed(p.encode_frame(hello("wl-0001")))
        err = await expect(b, p.Error)
        assert "live on /dev/ttyUSB0" in err.message
        a.feed(p.encode_frame(records([1])))
        await expect(a, p.Ack, seq=1)
        # The cable really moved: once the old port is down, the node may come in on b.
        a.unplug()
        b.feed(p.encode_frame(hello("wl-0001", next_seq=2, first_unacked=2)))
        await expect(b, p.Ack, seq=1)

    run(tmp_path, body)


# -- seq jumps -------------------------------------------------------------------------------


def test_first_unacked_jump_is_refused_and_records_keep_flowing(tmp_path: Path) -> None:
    async def body(gw: Gateway) -> None:
        a = await gw.link("/dev/ttyUSB0")
        a.feed(p.encode_frame(hello("wl-0001")))
        await expect(a, p.Ack, seq=0)
        a.feed(p.encode_frame(records([1, 2, 3])))
        await expect(a, p.Ack, seq=3)
        a.feed(p.encode_frame(hello("wl-0001", next_seq=BIG - 1, first_unacked=BIG - 1)))
        err = await expect(a, p.Error)
        assert err.code == p.ERR_BUSY and str(p.MAX_SEQ_JUMP) in err.message
        a.feed(p.encode_frame(hello("wl-0001", next_seq=p.MAX_SEQ_JUMP + 5, first_unacked=4)))
        assert "next_seq" in (await expect(a, p.Error)).message
        assert gw.queue.ack_of("wl-0001") == 3
        # The real node is not harmed: its records go on being stored, none as duplicates.
        a.feed(p.encode_frame(hello("wl-0001", next_seq=5, first_unacked=4)))
        await expect(a, p.Ack, seq=3)
        a.feed(p.encode_frame(records([4])))
        await expect(a, p.Ack, seq=4)
        a.feed(p.encode_frame(records([5], from_seq=4 + p.MAX_SEQ_JUMP + 2)))
        assert (await expect(a, p.Error)).code == p.ERR_BUSY
        assert gw.queue.ack_of("wl-0001") == 4 and gw.queue.nodes["wl-0001"].duplicates == 0
        assert gw.sessions.refused["jump"] == 3
        # Within what a journal can hold, `from` still applies (the node lost records).
        a.feed(p.encode_frame(records([100], from_seq=100)))
        await expect(a, p.Ack, seq=100)

    run(tmp_path, body)


# -- bounded node ids -----------------------------------------------------------------------


def test_node_ids_are_bounded(tmp_path: Path) -> None:
    async def body(gw: Gateway) -> None:
        links = [await gw.link(f"/dev/ttyUSB{i}") for i in range(6)]
        for i, link in enumerate(links[:4]):
            link.feed(p.encode_frame(hello(f"wl-{i:04d}")))
            await expect(link, p.Ack, seq=0)
        links[4].feed(p.encode_frame(hello("wl-0100")))
        err = await expect(links[4], p.Error)
        assert "at most 4 node ids" in err.message
        assert len(gw.sessions.nodes) == len(gw.queue.nodes) == 4
        assert gw.sessions.refused["nodes_full"] == 1
        links[5].feed(p.encode_frame(hello("wl-0100")))   # still refused, counted only
        await expect(links[5], p.Error)
        assert gw.sessions.refused["nodes_full"] == 2
        links[0].feed(p.encode_frame(records([1])))        # known nodes go on
        await expect(links[0], p.Ack, seq=1)

    run(tmp_path, body, max_nodes=4)


# -- integer ranges; one failing message rolls back alone ------------------------------------


def test_seq_beyond_int64_is_refused_at_decoding(tmp_path: Path) -> None:
    for bad in (records([BIG]), records([1], from_seq=BIG), hello(first_unacked=BIG),
                {0: p.ACK, 1: 1 << 64}):
        with pytest.raises(ProtocolError, match="0..2"):
            p.decode_message(cbor2.dumps(bad))
    largest = {0: p.RECORDS, 1: BIG - 1, 2: [[BIG - 1, BIG - 1, 1, 0, {1: 1.0}]]}
    p.decode_message(cbor2.dumps(largest))                 # the largest still fits

    async def body(gw: Gateway) -> None:
        a = await gw.link("/dev/ttyUSB0")
        b = await gw.link("/dev/ttyUSB1")
        a.feed(p.encode_frame(hello("wl-0001")))
        b.feed(p.encode_frame(hello("wl-0002")))
        await expect(a, p.Ack, seq=0)
        await expect(b, p.Ack, seq=0)
        a.feed(p.encode_frame(records([BIG])))
        b.feed(p.encode_frame(records([1, 2])))
        assert (await expect(a, p.Error)).code == p.ERR_MALFORMED
        await expect(b, p.Ack, seq=2)

    run(tmp_path, body)


def test_a_failing_message_rolls_back_alone_in_the_group_commit(tmp_path: Path) -> None:
    """store_many with one message SQLite cannot take (seq 2^63, made past the decoder)."""
    queue = Queue(tmp_path / "q.sqlite", "gw", "s")
    try:
        good = [p.Record(1, 1_700_000_001, p.KIND_LEVEL, 0, {1: 10.0})]
        bad = [p.Record(BIG, 1_700_000_001, p.KIND_ALARM, 0, {1: "alarm"})]
        results = queue.store_many([("wl-0001", "water", good, 1, 1.0),
                                    ("wl-0002", "water", bad, 1, 1.0),
                                    ("wl-0003", "water", good, 1, 1.0),
                                    ("wl-0004", "water", [], BIG, 1.0)])
        assert [type(r).__name__ for r in results] == ["StoreResult", "QueueError",
                                                       "StoreResult", "QueueError"]
        assert isinstance(results[1], QueueError) and "wl-0002" in str(results[1])
        assert queue.ack_of("wl-0001") == queue.ack_of("wl-0003") == 1
        assert "wl-0002" not in queue.nodes and "wl-0004" not in queue.nodes
    finally:
        queue.close()
    reopened = Queue(tmp_path / "q.sqlite", "gw", "s")    # committed on disk, not in memory
    try:
        assert reopened.depth() == 2 and sorted(reopened.nodes) == ["wl-0001", "wl-0003"]
    finally:
        reopened.close()


# -- REPLY matching, cyclic CBOR ------------------------------------------------------------


def test_reply_is_matched_on_link_node_and_request_id(tmp_path: Path) -> None:
    async def body(gw: Gateway) -> None:
        commander = Commander(gw.sessions, tmp_path / "commands.sqlite",
                              attempt_timeout_s=5.0, attempts=1)
        try:
            a = await gw.link("/dev/ttyUSB0")
            b = await gw.link("/dev/ttyUSB1")
            a.feed(p.encode_frame(hello("wl-0001")))
            b.feed(p.encode_frame(hello("wl-0002")))
            await expect(a, p.Ack, seq=0)
            await expect(b, p.Ack, seq=0)
            run = asyncio.create_task(commander.run("wl-0001", "config.get", {"key": "x"}))
            cmd = await expect(a, p.Command)
            # Another node answers first, with the right request id and a forged result.
            b.feed(p.encode_frame({0: p.REPLY, 1: cmd.request_id, 2: True, 3: "forged"}))
            async with asyncio.timeout(TIMEOUT_S):
                while commander.foreign_replies < 1:
                    await asyncio.sleep(0.01)
            a.feed(p.encode_frame({0: p.REPLY, 1: cmd.request_id, 2: True, 3: "real"}))
            result = await asyncio.wait_for(run, TIMEOUT_S)
            assert result.result == "real" and commander.foreign_replies == 1
        finally:
            commander.close()

    run(tmp_path, body)


def test_cyclic_reply_is_refused_not_raised(tmp_path: Path) -> None:
    # {0: REPLY, 1: 1, 2: true, 3: 28([29(0)])}: a list that contains itself
    cyclic = bytes([0xA4, 0x00, 0x05, 0x01, 0x01, 0x02, 0xF5, 0x03,
                    0xD8, 0x1C, 0x81, 0xD8, 0x1D, 0x00])
    with pytest.raises(ProtocolError, match="cyclic"):
        p.decode_message(cyclic)
    # shared, not cyclic, but exponential once expanded: refused by the item budget
    shared = cbor2.dumps({0: p.REPLY, 1: 1, 2: True, 3: _fan_out(12)}, value_sharing=True)
    assert len(shared) < p.MAX_PAYLOAD
    with pytest.raises(ProtocolError):
        p.decode_message(shared)

    async def body(gw: Gateway) -> None:
        commander = Commander(gw.sessions, tmp_path / "commands.sqlite",
                              attempt_timeout_s=0.5, attempts=2)
        try:
            a = await gw.link("/dev/ttyUSB0")
            a.feed(p.encode_frame(hello("wl-0001")))
            await expect(a, p.Ack, seq=0)
            run = asyncio.create_task(commander.run("wl-0001", "info"))
            cmd = await expect(a, p.Command)
            a.feed(p.encode_frame(cyclic.replace(b"\x01\x01", bytes([1, cmd.request_id]), 1)))
            assert (await expect(a, p.Error)).code == p.ERR_MALFORMED
            with pytest.raises(CommandError) as exc:
                await asyncio.wait_for(run, TIMEOUT_S)
            assert exc.value.status == 504
        finally:
            commander.close()

    run(tmp_path, body)


def _fan_out(depth: int) -> Any:
    node: Any = [0]
    for _ in range(depth):
        node = [node, node]
    return node


# -- BLE frame counter beyond 64 bits --------------------------------------------------------


def test_sealed_counter_beyond_64_bits_is_counted_not_raised() -> None:
    ch = ble_auth.Channel(b"k" * 32)
    msg = {0: ble_auth.SEALED, 1: 1 << 64, 2: b"x", 3: b"\x00" * ble_auth.TAG_LEN}
    with pytest.raises(ble_auth.ChannelError):
        ch.open(msg)
    assert ch.counts["malformed"] == 1

    async def main() -> None:
        link = BleLink("wl-0001", b"\x01" * 32, BleCentral())
        link.session.auth = ble_auth.GatewayAuth(link.secret, "wl-0001")
        link.session.auth.channel = ble_auth.Channel(b"k" * 32)
        link.session.authed = True
        for payload in (cbor2.dumps(msg), b"\xd8\x1c\x81\xd8\x1d\x00", b"\x9f" * 600):
            link.session.on_notify(None, bytearray(p.encode_frame(payload)))
        c = link.counters()
        assert c["sealed_malformed"] == 1 and c["malformed"] == 2
        assert link.incoming.empty()

    asyncio.run(main())


# -- config: the pin key ----------------------------------------------------------------------


def test_serial_link_pins_its_node_in_config() -> None:
    base: dict[str, Any] = {"gateway": {"id": "gw", "site": "s"}}
    cfg = parse({**base, "link": [{"type": "serial", "port": "/dev/ttyUSB0",
                                   "node": "wl-0001"}]})
    assert cfg.links[0].node == "wl-0001"
    with pytest.raises(ConfigError, match=r"link\[0\].node: .*letters, digits"):
        parse({**base, "link": [{"type": "serial", "port": "/dev/x", "node": "../../x"}]})
    with pytest.raises(ConfigError, match="already the node of link /dev/a"):
        parse({**base, "link": [{"type": "serial", "port": "/dev/a", "node": "wl-1"},
                                {"type": "serial", "port": "/dev/b", "node": "wl-1"}]})


def test_auth_errors_do_not_repeat_a_long_node_text() -> None:
    """What a node says during the handshake ends up in last_error, /status and the log."""
    for msg in ({0: 7, 1: 7, 2: "x" * 1000},
                {0: ble_auth.AUTH, 1: ble_auth.A_RESPONSE, 2: b"n" * ble_auth.NONCE_LEN,
                 3: b"m" * 32, 4: "y" * 1000},
                {0: "z" * 1000, 1: "z" * 1000}):
        auth = ble_auth.GatewayAuth(b"\x01" * 32, "wl-0001")
        auth.challenge()
        with pytest.raises(ble_auth.AuthError) as exc:
            auth.on_response(msg)
        assert len(str(exc.value)) < 200
