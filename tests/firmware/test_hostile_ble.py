"""A central that connects to a node and never authenticates, over virtual radios (bumble,
tests/support/ble_rig.py) with the node under MicroPython: it used to hold the node's only
BLE slot for as long as it stayed, and the installer's laptop with the right secret could not
even see the node (a connected node does not advertise). Now the node drops it after the
handshake time, advertises again, and the laptop gets in."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import cbor2
from bleak import BleakClient, BleakScanner
from roadside.gateway import ble_auth
from roadside.gateway import protocol as p
from roadside.gateway.links.ble import RX_UUID, TX_UUID
from support.ble_rig import BleRig, secret_for

TIMEOUT_S = 90.0


class Central:
    """A bare bleak central on the virtual controller, speaking frames to one node."""

    def __init__(self, rig: BleRig) -> None:
        assert rig.backend is not None
        self.backend = rig.backend
        self.rx: asyncio.Queue[dict[int, Any]] = asyncio.Queue()
        self.dec = p.FrameDecoder()
        self.client: BleakClient | None = None
        self.disconnected = asyncio.Event()

    async def connect(self, node: str, timeout: float) -> None:
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
        self.client = BleakClient(dev, backend=self.backend.client,
                                  disconnected_callback=lambda _c: self.disconnected.set())
        await self.client.connect()
        await self.client.start_notify(TX_UUID, self._notified)

    def _notified(self, _c: Any, data: bytearray) -> None:
        for payload in self.dec.feed(bytes(data)):
            self.rx.put_nowait(cbor2.loads(payload))

    async def send(self, payload: bytes) -> None:
        assert self.client is not None
        frame = b"\x00" + p.encode_frame(payload)
        for i in range(0, len(frame), 200):
            await self.client.write_gatt_char(RX_UUID, frame[i:i + 200], response=False)

    async def recv(self, timeout: float = 10.0) -> dict[int, Any]:
        return await asyncio.wait_for(self.rx.get(), timeout)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.disconnect()
            self.client = None


def test_a_silent_central_is_dropped_and_the_installer_gets_in(tmp_path: Path) -> None:
    async def main() -> None:
        rig = BleRig(tmp_path, nodes=1, speed=5.0)
        node = rig.node_id(1)
        try:
            await rig.start()
            squatter = Central(rig)
            await squatter.connect(node, timeout=15)  # and says nothing
            t0 = time.monotonic()
            laptop = Central(rig)
            await laptop.connect(node, timeout=40)    # the node advertises again once free
            waited = time.monotonic() - t0
            assert 8 < waited < 40, waited            # HANDSHAKE_MS is 10 s
            err = await squatter.recv()
            assert err[0] == 7 and "not authenticated in time" in err[2], err
            await asyncio.wait_for(squatter.disconnected.wait(), 10)
            auth = ble_auth.GatewayAuth(secret_for(1), node)
            await laptop.send(auth.challenge())
            await laptop.send(auth.on_response(await laptop.recv()))
            sealed = await laptop.recv()
            assert auth.channel is not None and sealed[0] == 9
            assert cbor2.loads(auth.channel.open(sealed))[0] == 1  # the node's HELLO
            await laptop.close()
        finally:
            await rig.stop()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
