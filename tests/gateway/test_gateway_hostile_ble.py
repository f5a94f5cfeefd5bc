"""A hostile BLE node over bumble's virtual radio against the gateway's real BleLink (bleak on
tests/support/bleak_bumble.py) and session manager: it knows its own secret and authenticates,
then sends a sealed frame whose counter does not fit 64 bits (struct.error before) and a sealed
HELLO claiming another node's id. The link counts the first and goes on; the session refuses
the second; the node's own HELLO still works."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import cbor2
from roadside.gateway import ble_auth
from roadside.gateway import protocol as p
from roadside.gateway.links.ble import BleCentral, BleLink
from roadside.gateway.queue import Queue
from roadside.gateway.session import SessionManager
from roadside.tools.sim.ble_bridge import VirtualAir
from support.ble_peripheral import AUTHENTICATED, TIMEOUT_S, ScriptedNode
from support.bleak_bumble import BumbleBackend

NODE = "wl-0001"
SECRET = bytes(range(32))


def hello(node: str) -> bytes:
    return cbor2.dumps({0: p.HELLO, 1: node, 2: "water", 7: 1, 9: 1})


def test_ble_counter_beyond_64_bits_and_foreign_hello(tmp_path: Path) -> None:
    async def main() -> None:
        air = VirtualAir()
        backend = await BumbleBackend.create(air)
        node = ScriptedNode(await air.device("hostile", "F0:00:00:00:00:09"), NODE, SECRET)
        await node.advertise()
        queue = Queue(tmp_path / "q.sqlite", "gw", "s")
        sessions = SessionManager(queue)
        central = BleCentral(None, scanner_backend=backend.scanner,
                             client_backend=backend.client)
        link = BleLink(NODE, SECRET, central)
        await link.open()
        served = asyncio.create_task(sessions.serve(link))
        try:
            await node.expect(AUTHENTICATED)
            async with asyncio.timeout(TIMEOUT_S):
                while not link.is_open:
                    await asyncio.sleep(0.02)
            # 1. a sealed frame whose counter needs 9 bytes
            await node.send(cbor2.dumps({0: ble_auth.SEALED, 1: 1 << 64, 2: hello(NODE),
                                         3: b"\x00" * ble_auth.TAG_LEN}))
            # 2. a sealed HELLO as another node (its MAC is right: it is this node's key)
            assert node.channel is not None
            await node.send(node.channel.seal(hello("wl-0002")))
            err = await node.expect(p.ERROR)
            assert err[1] == p.ERR_BUSY and "bound to wl-0001" in err[2]
            assert link.counters()["sealed_malformed"] == 1
            assert "wl-0002" not in queue.nodes and sessions.refused["identity"] == 1
            # 3. its own HELLO: the link still carries it
            await node.send(node.channel.seal(hello(NODE)))
            ack = await node.expect(p.ACK)
            assert ack[1] == 0 and link.is_open
        finally:
            served.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await served
            await asyncio.wait_for(link.close(), TIMEOUT_S)
            await air.close()
            queue.close()

    asyncio.run(asyncio.wait_for(main(), 60))
