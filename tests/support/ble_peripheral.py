"""A bumble peripheral speaking the node's side of PROTOCOL.md 5 by hand (no firmware): it
advertises as a roadside node, answers the AUTH challenge with its secret, opens what the
central seals and seals what the test sends. For the host-side BLE session's tests, where a
node must misbehave on purpose (prove another secret, refuse, replay, send what it likes).

    node = ScriptedNode(await air.device("n", "F0:00:00:00:00:09"), "wl-0001", secret)
    await node.advertise()
    ... a central connects and authenticates ...
    await node.send(node.channel.seal(payload))   # a sealed frame, notified in 180-byte pieces
    msg = await node.expect(p.ACK)                # the next message of that type it received
"""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

import cbor2
from bumble import gatt
from bumble.core import AdvertisingData
from bumble.device import Connection, Device
from roadside.gateway import ble_auth
from roadside.gateway import protocol as p
from roadside.gateway.links.ble import COMPANY_ID, MAGIC, RX_UUID, SERVICE_UUID, TX_UUID

TIMEOUT_S = 20.0
AUTHENTICATED = "authenticated"   # what expect() takes for the central's proof, accepted


class ScriptedNode:
    """The node's side by hand. `prove_with`: the secret its AUTH response is MACed with (its
    own unless given: another one is a node that does not know the gateway's secret);
    `refuse`: answer the challenge with this ERROR text instead. `writes` holds the length of
    every write the central made; `inbox` every message received (sealed ones opened)."""

    def __init__(self, device: Device, node: str, secret: bytes,
                 prove_with: bytes | None = None, refuse: str | None = None) -> None:
        self.device = device
        self.node = node
        self.secret = secret
        self.prove_with = prove_with or secret
        self.refuse = refuse
        self.dec = p.FrameDecoder()
        self.inbox: asyncio.Queue[dict[Any, Any]] = asyncio.Queue()
        self.writes: list[int] = []
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
            (AdvertisingData.COMPLETE_LOCAL_NAME, self.node.encode()),
            (AdvertisingData.MANUFACTURER_SPECIFIC_DATA, mfr)]))
        await self.device.start_advertising(advertising_data=adv,
                                            advertising_interval_min=20,
                                            advertising_interval_max=20)

    def _connected(self, conn: Connection) -> None:
        self.conn = conn

    def _written(self, _conn: Connection, value: bytes) -> None:
        self.writes.append(len(value))
        for payload in self.dec.feed(bytes(value)):
            msg = cbor2.loads(payload)
            if msg.get(0) == ble_auth.AUTH and msg.get(1) == ble_auth.A_CHALLENGE:
                self.ng = msg[2]
                if self.refuse is not None:
                    self.send_soon(cbor2.dumps({0: p.ERROR, 1: ble_auth.ERR_AUTH,
                                                2: self.refuse}))
                    continue
                mac = ble_auth.hmac_sha256(self.prove_with, ble_auth.L_NODE + self.ng
                                           + self.nn + self.node.encode())
                self.send_soon(cbor2.dumps({0: ble_auth.AUTH, 1: ble_auth.A_RESPONSE,
                                            2: self.nn, 3: mac, 4: self.node}))
            elif msg.get(0) == ble_auth.AUTH and msg.get(1) == ble_auth.A_PROOF:
                want = ble_auth.hmac_sha256(self.secret, ble_auth.L_GATEWAY + self.nn + self.ng)
                if msg.get(2) != want:
                    self.inbox.put_nowait({0: "bad proof"})
                    continue
                key = ble_auth.hmac_sha256(self.secret, ble_auth.L_KEY + self.ng + self.nn)
                self.channel = ble_auth.Channel(key, send_dir=ble_auth.DIR_NODE,
                                                recv_dir=ble_auth.DIR_GATEWAY)
                self.inbox.put_nowait({0: AUTHENTICATED})
            elif msg.get(0) == ble_auth.SEALED and self.channel is not None:
                self.inbox.put_nowait(cbor2.loads(self.channel.open(msg)))
            else:
                self.inbox.put_nowait(msg)

    def send_soon(self, payload: bytes) -> None:
        asyncio.get_running_loop().create_task(self.send(payload))

    async def send(self, payload: bytes) -> None:
        """`payload` framed and notified in 180-byte pieces."""
        assert self.conn is not None
        frame = p.encode_frame(payload)
        for i in range(0, len(frame), 180):
            await self.device.notify_subscriber(self.conn, self.tx, frame[i:i + 180])
            await self.conn.drain()

    async def expect(self, msg_type: Any) -> dict[Any, Any]:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                m = await self.inbox.get()
                if m.get(0) == msg_type:
                    return m
