"""A central that connects to a node and never authenticates, over virtual radios (bumble,
tests/support/ble_rig.py) with the node under MicroPython: it used to hold the node's only
BLE slot for as long as it stayed, and the installer's laptop with the right secret could not
even see the node (a connected node does not advertise). Now the node drops it after the
handshake time, advertises again, and the laptop gets in."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import cbor2
from roadside.gateway import ble_auth
from support.ble_central import Central
from support.ble_rig import BleRig, secret_for

TIMEOUT_S = 90.0


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
            err = await squatter.recv(10.0)
            assert err[0] == 7 and "not authenticated in time" in err[2], err
            await asyncio.wait_for(squatter.disconnected.wait(), 10)
            auth = ble_auth.GatewayAuth(secret_for(1), node)
            await laptop.send(auth.challenge())
            await laptop.send(auth.on_response(await laptop.recv(10.0)))
            sealed = await laptop.recv(10.0)
            assert auth.channel is not None and sealed[0] == 9
            assert cbor2.loads(auth.channel.open(sealed))[0] == 1  # the node's HELLO
            await laptop.close()
        finally:
            await rig.stop()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
