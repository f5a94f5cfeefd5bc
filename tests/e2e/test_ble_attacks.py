"""Attacks on a node's BLE service, from a nearby central that does not know (or only half
knows) the secret: the node under MicroPython refuses and counts a command before auth, a
sealed frame before auth, a replayed proof, a wrong key (with lockout), forged and replayed
frames; the config is untouched. The gateway's BleLink with the wrong key refuses the node
and counts it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cbor2
from roadside.gateway import ble_auth
from roadside.gateway.links.ble import BleCentral, BleLink
from support.ble_central import Central
from support.ble_rig import BleRig, secret_for

TIMEOUT_S = 45.0


def test_attacks_refused_and_counted(tmp_path: Path) -> None:
    async def main() -> None:
        rig = BleRig(tmp_path, nodes=1, speed=5.0)
        node = rig.node_id(1)
        secret = secret_for(1)
        try:
            await rig.start()
            c = Central(rig)
            await c.connect(node)
            # 1. a command before authentication
            await c.send(cbor2.dumps({0: 4, 1: 1, 2: "config.set",
                                      3: {"key": "role", "value": "toll"}}))
            err = await c.recv()
            assert err[0] == 7 and err[1] == 7 and "authenticate first" in err[2]
            # 2. a sealed frame before authentication
            await c.send(ble_auth.sealed_payload(1, cbor2.dumps({0: 3, 1: 99}), b"\x00" * 8))
            assert (await c.recv())[0] == 7
            # a real session, recorded by the attacker: its challenge and proof (the frames a
            # sniffer near the pole sees); the node accepted that proof (a sealed HELLO)
            legit = ble_auth.GatewayAuth(secret, node)
            await c.send(legit.challenge())
            recorded_proof = legit.on_response(await c.recv())
            await c.send(recorded_proof)
            hello = await c.recv()
            assert hello[0] == 9
            assert legit.channel is not None
            old_ng = legit.ng
            await c.close()
            # 3. a replayed challenge/proof: the node's fresh nonce makes the old proof wrong
            await c.connect(node)
            replay = ble_auth.GatewayAuth(secret, node, rng=lambda n: old_ng)  # same challenge
            await c.send(replay.challenge())
            resp = await c.recv()
            assert resp[0] == 8 and resp[2] != b""
            # the proof recorded from the earlier session, valid for that session's node nonce
            await c.send(recorded_proof)
            err = await c.recv()
            assert err[0] == 7 and "auth failed" in err[2], err
            await c.close()
            # 4. locked out: even the right key is refused until the lockout ends
            await c.connect(node)
            await c.send(ble_auth.GatewayAuth(secret, node).challenge())
            err = await c.recv()
            assert err[0] == 7 and "locked out" in err[2], err
            await asyncio.sleep(1.1)
            # 5. the wrong key: the node's MAC does not verify, and our proof fails
            wrong = ble_auth.GatewayAuth(b"\x42" * 32, node)
            await c.send(wrong.challenge())
            try:
                wrong.on_response(await c.recv())
                raise AssertionError("a node MAC verified under the wrong key")
            except ble_auth.AuthError:
                pass
            await c.send(cbor2.dumps({0: 8, 1: 3, 2: b"\x00" * 32}))
            err = await c.recv()
            assert "auth failed: locked out for 2000 ms" in err[2], err
            await asyncio.sleep(0.3)
            await c.close()
            await asyncio.sleep(2.1)
            # 6. the right key again; then forged and replayed frames in the session
            await c.connect(node)
            auth = await c.handshake(secret, node)
            ch = auth.channel
            assert ch is not None
            assert (await c.recv())[0] == 9       # sealed HELLO
            forged = ble_auth.sealed_payload(ch.tx_ctr + 5, cbor2.dumps({0: 3, 1: 100}),
                                             b"\x00" * 8)
            await c.send(forged)
            ping = ch.seal(cbor2.dumps({0: 4, 1: 7, 2: "ping"}))
            await c.send(ping)
            await c.send(ping)                     # replayed
            info = ch.seal(cbor2.dumps({0: 4, 1: 8, 2: "info"}))
            await c.send(info)
            stats = None
            for _ in range(20):
                m = await c.recv()
                if m[0] != 9:
                    continue
                inner = cbor2.loads(ch.open(m))
                if inner[0] == 5 and inner[1] == 8:
                    stats = inner[3]["ble"]
                    break
            assert stats is not None
            assert stats["unauthenticated"] >= 2, stats
            assert stats["auth_failed"] == 2 and stats["locked_out"] == 1, stats
            assert stats["forged"] == 1 and stats["replayed"] == 1, stats
            assert stats["auth_ok"] == 2 and stats["secret"] is True, stats
            await c.close()
            cfg = rig.nodes[0].flash.get_json("config.json")
            assert cfg["role"] == "water"
            # the gateway's link with the wrong key: refused and counted, never open
            assert rig.backend is not None
            central = BleCentral("bd-test", scanner_backend=rig.backend.scanner,
                                 client_backend=rig.backend.client)
            link = BleLink(node, b"\x13" * 32, central, retry_s=0.2)
            await link.open()
            for _ in range(100):
                if link.auth_failures:
                    break
                await asyncio.sleep(0.1)
            await link.close()
            assert link.auth_failures >= 1 and link.auth_ok == 0
            assert link.counters()["auth_failures"] >= 1
            assert "does not know the secret" in (link.last_error or "")
        finally:
            await rig.stop()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
