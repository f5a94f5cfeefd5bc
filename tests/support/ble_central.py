"""A bare bleak central on the virtual controller (tests/support/ble_rig.py), speaking frames
to one node: what a phone near a pole (or an installer's laptop) can do over the air."""

from __future__ import annotations

import asyncio
from typing import Any

import cbor2
from bleak import BleakClient, BleakScanner
from roadside.gateway import ble_auth
from roadside.gateway import protocol as p
from roadside.gateway.links.ble import RX_UUID, TX_UUID

from support.ble_rig import BleRig


class Central:
    """Connects to a node by name; sends frames in 200-byte writes, receives its notified
    frames decoded; `disconnected` is set when the node drops the connection."""

    def __init__(self, rig: BleRig) -> None:
        assert rig.backend is not None
        self.backend = rig.backend
        self.rx: asyncio.Queue[dict[int, Any]] = asyncio.Queue()
        self.dec = p.FrameDecoder()
        self.client: BleakClient | None = None
        self.disconnected = asyncio.Event()

    async def connect(self, node: str, timeout: float = 10.0) -> None:
        found: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def seen(dev: Any, adv: Any) -> None:
            if adv.local_name == node and not found.done():
                found.set_result(dev)
        scanner = BleakScanner(seen, backend=self.backend.scanner)
        await scanner.start()
        try:
            dev = await asyncio.wait_for(found, timeout)
        finally:
            await scanner.stop()
        self.disconnected.clear()
        self.client = BleakClient(dev, backend=self.backend.client,
                                  disconnected_callback=lambda _c: self.disconnected.set())
        await self.client.connect()
        self.dec.reset()
        await self.client.start_notify(TX_UUID, self._notified)

    def _notified(self, _c: Any, data: bytearray) -> None:
        for payload in self.dec.feed(bytes(data)):
            self.rx.put_nowait(cbor2.loads(payload))

    async def send(self, payload: bytes) -> None:
        assert self.client is not None
        frame = b"\x00" + p.encode_frame(payload)
        for i in range(0, len(frame), 200):
            await self.client.write_gatt_char(RX_UUID, frame[i:i + 200], response=False)

    async def recv(self, timeout: float = 5.0) -> dict[int, Any]:
        return await asyncio.wait_for(self.rx.get(), timeout)

    async def handshake(self, secret: bytes, node: str) -> ble_auth.GatewayAuth:
        """The gateway's side of the AUTH exchange with `secret`; returns it (its channel)."""
        auth = ble_auth.GatewayAuth(secret, node)
        await self.send(auth.challenge())
        proof = auth.on_response(await self.recv())
        await self.send(proof)
        return auth

    async def close(self) -> None:
        if self.client is not None:
            await self.client.disconnect()
            self.client = None
