"""The host-side BLE session (gateway/links/ble_session.py), shared by the gateway's BleLink
and the tools' BleSerial, against a scripted node on bumble's virtual radio (bleak on
tests/support/bleak_bumble.py): a node that does not know the secret, or refuses, never gets
our proof; a frame larger than the MTU goes out in MTU-sized writes and one coming in over
several notifications is reassembled; a replayed sealed frame is refused and counted. The
same node refusing BleSerial gives the CLI's one line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from roadside.gateway import ble_auth
from roadside.gateway import protocol as p
from roadside.gateway.links.ble_session import BleSession
from roadside.tools.node import ble_transport
from roadside.tools.sim.ble_bridge import VirtualAir
from support.ble_peripheral import AUTHENTICATED, TIMEOUT_S, ScriptedNode
from support.bleak_bumble import BumbleBackend

NODE = "wl-0001"
SECRET = bytes(range(32))


async def find(backend: BumbleBackend, name: str) -> BLEDevice:
    found: asyncio.Future[BLEDevice] = asyncio.get_running_loop().create_future()

    def seen(dev: BLEDevice, adv: Any) -> None:
        if adv.local_name == name and not found.done():
            found.set_result(dev)
    scanner = BleakScanner(seen, backend=backend.scanner)
    await scanner.start()
    try:
        return await asyncio.wait_for(found, TIMEOUT_S)
    finally:
        await scanner.stop()


def on_radio(body: Callable[[BumbleBackend, VirtualAir], Awaitable[None]]) -> None:
    async def main() -> None:
        air = VirtualAir()
        try:
            await body(await BumbleBackend.create(air), air)
        finally:
            await air.close()
    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("how", ["wrong secret", "refused"])
def test_a_node_that_fails_the_handshake_never_gets_our_proof(how: str) -> None:
    async def body(backend: BumbleBackend, air: VirtualAir) -> None:
        kw: dict[str, Any] = ({"prove_with": b"\x11" * 32} if how == "wrong secret"
                              else {"refuse": "no secret set"})
        node = ScriptedNode(await air.device("n", "F0:00:00:00:00:09"), NODE, SECRET, **kw)
        await node.advertise()
        s = BleSession(NODE, SECRET, lambda _b: None, client_backend=backend.client)
        await s.connect(await find(backend, NODE), TIMEOUT_S)
        try:
            with pytest.raises(ble_auth.AuthError) as exc:
                await s.authenticate()
            assert s.response is not None and not s.authed
            if how == "wrong secret":
                assert "does not know the secret" in str(exc.value)
                assert s.response[0] == ble_auth.AUTH
            else:
                assert "node refused: no secret set" in str(exc.value)
                assert s.response[0] == p.ERROR
            with pytest.raises(RuntimeError, match="not authenticated"):
                s.seal(p.encode_frame(b"x"))
            writes = len(node.writes)
            assert node.inbox.empty() and writes >= 1   # the challenge only: no proof
        finally:
            await s.close()
        assert s.client is None

    on_radio(body)


def test_frames_larger_than_the_mtu_both_ways_and_a_replay_refused() -> None:
    async def body(backend: BumbleBackend, air: VirtualAir) -> None:
        node = ScriptedNode(await air.device("n", "F0:00:00:00:00:09"), NODE, SECRET)
        await node.advertise()
        got: asyncio.Queue[bytes] = asyncio.Queue()
        refused: list[tuple[str, str]] = []
        s = BleSession(NODE, SECRET, got.put_nowait, client_backend=backend.client,
                       on_refused=lambda reason, text: refused.append((reason, text)))
        await s.connect(await find(backend, NODE), TIMEOUT_S)
        try:
            await s.authenticate()
            await node.expect(AUTHENTICATED)
            assert s.authed and s.connected and s.room == s.mtu - 3
            # out: one frame three times the MTU, split into writes of at most `room` bytes
            big = cbor2.dumps({0: p.HELLO, 1: NODE, 2: "x" * (3 * s.mtu)})
            sealed = s.seal(p.encode_frame(big)[:40])   # a partial frame seals nothing yet
            assert sealed == []
            sealed = s.seal(p.encode_frame(big)[40:])
            assert len(sealed) == 1 and len(sealed[0]) > 3 * s.mtu
            node.writes.clear()
            await s.write(sealed[0])
            msg = await node.expect(p.HELLO)
            assert msg[2] == "x" * (3 * s.mtu)
            assert len(node.writes) >= 4 and max(node.writes) == s.room
            assert sum(node.writes) == len(sealed[0])
            # in: a sealed frame notified in 180-byte pieces comes out whole, once
            assert node.channel is not None
            inner = cbor2.dumps({0: p.RECORDS, 1: "y" * 900})
            frame = node.channel.seal(inner)
            await node.send(frame)
            async with asyncio.timeout(TIMEOUT_S):
                assert await got.get() == inner
            await node.send(frame)                      # the same counter again
            await node.send(cbor2.dumps({0: p.HELLO}))  # unsealed after authentication
            await node.send(node.channel.seal(b"ok"))
            async with asyncio.timeout(TIMEOUT_S):
                assert await got.get() == b"ok"
            assert got.empty()
            assert refused == [("replayed", "replayed frame refused")]
            assert s.refused["replayed"] == 1 and s.unsealed == 1
        finally:
            await s.close()
        assert not s.authed

    on_radio(body)


def test_ble_serial_names_the_node_and_the_key_when_the_proof_is_wrong(tmp_path: Path) -> None:
    """The tools' side of the same session: one line naming node, key file and what next."""
    async def body(backend: BumbleBackend, air: VirtualAir) -> None:
        node = ScriptedNode(await air.device("n", "F0:00:00:00:00:09"), NODE, SECRET,
                            prove_with=b"\x11" * 32)
        await node.advertise()
        key = tmp_path / "wl-0001.key"
        key.write_text(SECRET.hex())
        loop = asyncio.get_running_loop()
        with pytest.raises(ble_transport.BleError) as exc:
            await asyncio.to_thread(ble_transport.BleSerial.open, NODE, key, loop=loop,
                                    backend=(backend.scanner, backend.client))
        text = str(exc.value)
        assert text.startswith(f"authentication with {NODE} failed: the node does not know"
                               f" this secret; check that the key file {key} (fingerprint ")
        assert "\n" not in text and node.inbox.empty()

    on_radio(body)
