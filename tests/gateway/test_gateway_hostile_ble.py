"""A hostile BLE node over bumble's virtual radio against the gateway's real BleLink (bleak on
tests/support/bleak_bumble.py) and session manager: it knows its own secret and authenticates,
then sends a sealed frame whose counter does not fit 64 bits (struct.error before) and a sealed
HELLO claiming another node's id. The link counts the first and goes on; the session refuses
the second; the node's own HELLO still works."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from pathlib import Path
from typing import Any

import cbor2
from bumble import gatt
from bumble.core import AdvertisingData
from bumble.device import Connection, Device
from roadside.gateway import ble_auth
from roadside.gateway import protocol as p
from roadside.gateway.links.ble import (
    COMPANY_ID,
    MAGIC,
    RX_UUID,
    SERVICE_UUID,
    TX_UUID,
    BleCentral,
    BleLink,
)
from roadside.gateway.queue import Queue
from roadside.gateway.session import SessionManager
from roadside.tools.sim.ble_bridge import VirtualAir
from support.bleak_bumble import BumbleBackend

NODE = "wl-0001"
SECRET = bytes(range(32))
TIMEOUT_S = 20.0


class HostileNode:
    """A bumble peripheral speaking the node's side of PROTOCOL.md 5 by hand."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.dec = p.FrameDecoder()
        self.inbox: asyncio.Queue[dict[int, Any]] = asyncio.Queue()
        self.conn: Connection | None = None
        self.channel: ble_auth.Channel | None = None
        self.ng = b""
        self.nn = os.urandom(ble_auth.NONCE_LEN)
        self.tx = gatt.Characteristic(TX_UUID, gatt.Characteristic.Properties.NOTIFY,
                                      gatt.Characteristic.READABLE, b"")
        rx = gatt.Characteristic(
            RX_UUID, gatt.Characteristic.Properties.WRITE_WITHOUT_RESPONSE
            | gatt.Characteristic.Properties.WRITE, gatt.Characteristic.WRITEABLE,
            gatt.CharacteristicValue(write=self._written))
        device.add_service(gatt.Service(SERVICE_UUID, [rx, self.tx]))
        device.on("connection", self._connected)

    async def advertise(self) -> None:
        mfr = struct.pack("<H", COMPANY_ID) + MAGIC + bytes([1, 1, 0, 0xFF, 0, 0])
        adv = bytes(AdvertisingData([
            (AdvertisingData.FLAGS, bytes([0x06])),
            (AdvertisingData.COMPLETE_LOCAL_NAME, NODE.encode()),
            (AdvertisingData.MANUFACTURER_SPECIFIC_DATA, mfr)]))
        await self.device.start_advertising(advertising_data=adv,
                                            advertising_interval_min=20,
                                            advertising_interval_max=20)

    def _connected(self, conn: Connection) -> None:
        self.conn = conn

    def _written(self, _conn: Connection, value: bytes) -> None:
        for payload in self.dec.feed(bytes(value)):
            msg = cbor2.loads(payload)
            if msg.get(0) == ble_auth.AUTH and msg.get(1) == ble_auth.A_CHALLENGE:
                self.ng = msg[2]
                mac = ble_auth.hmac_sha256(SECRET, ble_auth.L_NODE + self.ng + self.nn
                                           + NODE.encode())
                self.send_soon(cbor2.dumps({0: ble_auth.AUTH, 1: ble_auth.A_RESPONSE,
                                            2: self.nn, 3: mac, 4: NODE}))
            elif msg.get(0) == ble_auth.AUTH and msg.get(1) == ble_auth.A_PROOF:
                key = ble_auth.hmac_sha256(SECRET, ble_auth.L_KEY + self.ng + self.nn)
                self.channel = ble_auth.Channel(key, send_dir=ble_auth.DIR_NODE,
                                                recv_dir=ble_auth.DIR_GATEWAY)
                self.inbox.put_nowait({0: "authenticated"})
            elif msg.get(0) == ble_auth.SEALED and self.channel is not None:
                self.inbox.put_nowait(cbor2.loads(self.channel.open(msg)))

    def send_soon(self, payload: bytes) -> None:
        asyncio.get_running_loop().create_task(self.send(payload))

    async def send(self, payload: bytes) -> None:
        assert self.conn is not None
        frame = p.encode_frame(payload)
        for i in range(0, len(frame), 180):
            await self.device.notify_subscriber(self.conn, self.tx, frame[i:i + 180])
            await self.conn.drain()

    async def expect(self, msg_type: int) -> dict[int, Any]:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                m = await self.inbox.get()
                if m.get(0) == msg_type:
                    return m


def hello(node: str) -> bytes:
    return cbor2.dumps({0: p.HELLO, 1: node, 2: "water", 7: 1, 9: 1})


def test_ble_counter_beyond_64_bits_and_foreign_hello(tmp_path: Path) -> None:
    async def main() -> None:
        air = VirtualAir()
        backend = await BumbleBackend.create(air)
        node = HostileNode(await air.device("hostile", "F0:00:00:00:00:09"))
        await node.advertise()
        queue = Queue(tmp_path / "q.sqlite", "gw", "s")
        sessions = SessionManager(queue)
        central = BleCentral(None, scanner_backend=backend.scanner,
                             client_backend=backend.client)
        link = BleLink(NODE, SECRET, central)
        await link.open()
        served = asyncio.create_task(sessions.serve(link))
        try:
            await node.expect("authenticated")  # type: ignore[arg-type]
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
