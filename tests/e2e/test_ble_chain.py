"""BLE end to end without radios: MicroPython nodes (their real ble.py and auth.py) -> bumble
bridge -> virtual controllers -> the gateway's real bleak code (on the bumble backend) ->
SQLite queue -> HTTP uplink -> the reference receiver; exactly once, through a BLE link drop
mid-stream, with three nodes at once. /status and /metrics show the BLE links."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from roadside.tools.sim import procs
from roadside.tools.sim.receiver_store import read_seqs
from support.ble_rig import BleRig

TEST_TIMEOUT_S = 60.0


async def wait_until(predicate: Callable[[], Awaitable[bool] | bool], timeout: float,
                     what: str, rig: BleRig) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = predicate()
            if r if isinstance(r, bool) else await r:
                return
        except aiohttp.ClientError:
            pass    # the gateway's status server is not up yet
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{rig.logs()}")


def seqs(db: Path) -> dict[str, list[int]]:
    return read_seqs(db) if db.exists() else {}


def test_ble_nodes_to_receiver_exactly_once_through_a_drop(tmp_path: Path) -> None:
    receiver = procs.start_receiver(tmp_path / "receiver.sqlite", tmp_path / "receiver.log")

    async def main() -> None:
        rig = BleRig(tmp_path, nodes=3, speed=20.0)
        try:
            await rig.start()
            await rig.start_gateway(rig.gateway_config(receiver.batches_url))
            db = receiver.db
            await wait_until(lambda: all(len(seqs(db).get(rig.node_id(i), [])) >= 4
                                         for i in (1, 2, 3)), 30, "records from 3 nodes", rig)
            before = len(seqs(db)[rig.node_id(1)])
            await rig.bridges[0].drop()          # the radio link of node 1 fades mid-stream
            async with aiohttp.ClientSession() as http:
                async def reconnected() -> bool:
                    async with http.get(rig.status_url) as r:
                        doc = await r.json()
                    link = next(x for x in doc["links"] if x["port"] == "ble:wl-0001")
                    return link["reconnects"] >= 1 and link["state"] == "open"
                await wait_until(reconnected, 20, "node 1 to reconnect", rig)
                await wait_until(lambda: len(seqs(db)[rig.node_id(1)]) >= before + 3, 20,
                                 "records after the drop", rig)
                async with http.get(rig.status_url.replace("/status", "/metrics")) as r:
                    metrics = await r.text()
                async with http.get(rig.status_url) as r:
                    doc = await r.json()
            assert 'roadside_ble_rssi_dbm{link="ble:wl-0001"}' in metrics
            assert 'roadside_ble_events_total{event="reconnects",link="ble:wl-0001"}' in metrics
            for link in doc["links"]:
                assert link["type"] == "ble" and link["auth_failures"] == 0, link
                assert link["forged"] == link["replayed"] == 0, link
                assert link["rssi"] < 0
            # stop the nodes, let the gateway deliver what it has acked
            await asyncio.gather(*(n.stop() for n in rig.nodes))

            async def drained() -> bool:
                async with aiohttp.ClientSession() as http, http.get(rig.status_url) as r:
                    d = await r.json()
                got = seqs(db)
                return all(len(got.get(n["id"], [])) >= n["acked"] for n in d["nodes"]) and \
                    d["queue"]["depth"] == 0
            await wait_until(drained, 20, "the queue to drain", rig)
            async with aiohttp.ClientSession() as http, http.get(rig.status_url) as r:
                final = await r.json()
            got = seqs(db)
            for n in final["nodes"]:
                s = got[n["id"]]
                assert len(s) == len(set(s)), f"{n['id']}: duplicates"
                assert sorted(s) == list(range(1, n["acked"] + 1)), f"{n['id']}: gaps"
                assert n["acked"] >= 4
        finally:
            await rig.stop()

    try:
        asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT_S))
    finally:
        procs.stop(receiver.proc)


def test_more_nodes_than_slots_take_turns(tmp_path: Path) -> None:
    """One connection slot, two nodes: a connected node that has gone idle gives its slot
    to the waiting one after hold_s (rotation), and both report."""

    async def main() -> None:
        rig = BleRig(tmp_path, nodes=2, speed=1.0)
        try:
            await rig.start()
            await rig.start_gateway(rig.gateway_config(None, max_connections=1, hold_s=1.0))
            async with aiohttp.ClientSession() as http:
                async def status() -> dict:
                    async with http.get(rig.status_url) as r:
                        return await r.json()

                async def both_reported() -> bool:
                    doc = await status()
                    got = {n["id"]: n["acked"] for n in doc["nodes"]}
                    return len(got) == 2 and all(v >= 2 for v in got.values())
                await wait_until(both_reported, 30, "both nodes through one slot", rig)
                doc = await status()
            assert sum(x["rotations"] for x in doc["links"]) >= 1
            assert sum(x["state"] == "open" for x in doc["links"]) <= 1
        finally:
            await rig.stop()

    asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT_S))
