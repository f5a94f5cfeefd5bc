#!/usr/bin/env python3
"""Updates over the air: time to push the full app bundle (`roadside ota build app`, mpy-cross,
~75 KB) through the gateway daemon to 1 node and to a site of N nodes (canary 1, then the
rest at once), over serial at 115,200 baud and over BLE; the records the nodes keep sending
meanwhile; and the ACK latency of records (a priority one among them) while chunks flow.

    .venv/bin/python bench/bench_ota.py                     # serial 1 and 20 nodes, BLE 1
    .venv/bin/python bench/bench_ota.py --serial 1 5 --ble 0 --json

serial    real nodes (firmware/sim_main.py under MicroPython, LittleFS image, ota key in
          flash) on virtual cables (ptys: no wire time of their own), the gateway daemon as a
          subprocess with its links at 115,200 baud: the pacing takes half of that (5,760
          B/s) for chunks, so the transfer time is what a real 115,200 cable gives, give or
          take the node's flash writes; `roadside ota push --site --canary 1`
ble       real nodes over bumble's virtual radio (tests/support/ble_rig.py, the gateway
          in process), the rollout through the local API; chunks of 192 bytes paced at the BLE
          link's byte rate (GATEWAY.md), the node at a BLE node's board heap
          (launcher.BLE_HEAPSIZE)
records   records stored by the gateway per second, all nodes, in the 10 s before the push
          and while it runs (the flood scenario at speed 10)
latency   a scripted node speaking the contract (tests/support/ota_node.py) on a pty sends a
          record every 50 ms (every 10th a PRIORITY alarm) during a transfer and alone:
          median and max ACK latency (the gateway's commit + answer; a pty adds no wire time)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from roadside.tools.ota import bundle as builder  # noqa: E402
from roadside.tools.sim import procs  # noqa: E402
from roadside.tools.sim.gateway_toml import GatewaySettings, write  # noqa: E402
from roadside.tools.sim.launcher import Simulation  # noqa: E402
from support.gateway_status import status  # noqa: E402
from support.ota_node import OtaNode, api, make_bundle  # noqa: E402

KEY = bytes(range(32))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stored(url: str) -> int:
    return sum(n["records"] for n in status(url)["nodes"])


async def _wait_hellos(url: str, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            nodes = (await asyncio.to_thread(status, url))["nodes"]
        except OSError:
            nodes = []
        if sum(1 for x in nodes if x.get("fw")) >= n:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(nodes)} of {n} nodes said HELLO in {timeout} s")
        await asyncio.sleep(0.2)


async def _follow(base: str, data_dir: Path, rid: int) -> dict[str, Any]:
    while True:
        code, doc = await asyncio.to_thread(api, base, data_dir, f"/ota/rollouts/{rid}")
        if code == 200 and doc["state"] != "running":
            return doc
        await asyncio.sleep(0.2)


async def serial_push(nodes: int, bundle: bytes) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ota-") as tmp:
        t = Path(tmp)
        sim = Simulation.water(t / "run", nodes, scenario="flood", speed=10.0)
        for n in sim.nodes:
            n.spec.ota_key = KEY
        listen = f"127.0.0.1:{_free_port()}"
        url, base, data_dir = f"http://{listen}/status", f"http://{listen}", t / "data"
        proc = None
        try:
            await sim.start()
            cfg = write(t / "gw.toml", list(sim.gateway_ports().values()), data_dir, None,
                        listen, GatewaySettings(baudrate=115200))
            proc, _ = await asyncio.to_thread(procs.start_gateway, cfg, t / "gw.log")
            await _wait_hellos(url, nodes)
            s0, t0 = await asyncio.to_thread(_stored, url), time.monotonic()
            await asyncio.sleep(10)
            before = (await asyncio.to_thread(_stored, url) - s0) / (time.monotonic() - t0)
            s1, t1 = await asyncio.to_thread(_stored, url), time.monotonic()
            code, doc = await asyncio.to_thread(api, base, data_dir, "/ota/rollouts", bundle,
                                                {"site": "1", "canary": "1"})
            assert code == 202, doc
            end = await _follow(base, data_dir, doc["id"])
            seconds = time.monotonic() - t1
            during = (await asyncio.to_thread(_stored, url) - s1) / seconds
            per_node = [n["seconds"] or 0.0 for n in end["nodes"]]
            return {"nodes": nodes, "state": end["state"], "reason": end["reason"],
                    "size": end["size"], "seconds": seconds,
                    "node_seconds_median": statistics.median(per_node),
                    "records_s_before": before, "records_s_during": during,
                    "rewinds": sum(n["rewinds"] for n in end["nodes"]),
                    "offers": sum(n["attempts"] for n in end["nodes"])}
        finally:
            await sim.stop()
            if proc is not None:
                procs.stop(proc)


async def ble_push(nodes: int, bundle: bytes) -> dict[str, Any]:
    from roadside.gateway.config import OtaConfig
    from support.ble_rig import BleRig

    with tempfile.TemporaryDirectory(prefix="bench-ota-ble-") as tmp:
        rig = BleRig(Path(tmp), nodes=nodes, speed=10.0)
        try:
            await rig.start(ota_key=KEY)
            config = rig.gateway_config(None, max_connections=max(8, nodes))
            config = dataclasses.replace(config, ota=OtaConfig())
            await rig.start_gateway(config)
            await _wait_hellos(rig.status_url, nodes)
            base = rig.status_url.removesuffix("/status")
            t1 = time.monotonic()
            s1 = await asyncio.to_thread(_stored, rig.status_url)
            code, doc = await asyncio.to_thread(api, base, config.gateway.data_dir,
                                                "/ota/rollouts", bundle,
                                                {"site": "1", "canary": "1"})
            assert code == 202, doc
            end = await _follow(base, config.gateway.data_dir, doc["id"])
            seconds = time.monotonic() - t1
            during = (await asyncio.to_thread(_stored, rig.status_url) - s1) / seconds
            return {"nodes": nodes, "state": end["state"], "reason": end["reason"],
                    "size": end["size"], "seconds": seconds,
                    "node_seconds_median": statistics.median(n["seconds"] or 0.0
                                                             for n in end["nodes"]),
                    "records_s_during": during}
        finally:
            await rig.stop()


async def latency(during_transfer: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ota-lat-") as tmp:
        t = Path(tmp)
        node = OtaNode("wl-0001")
        listen = f"127.0.0.1:{_free_port()}"
        cfg = write(t / "gw.toml", [node.path], t / "data", None, listen,
                    GatewaySettings(baudrate=115200))
        proc, _ = await asyncio.to_thread(procs.start_gateway, cfg, t / "gw.log")
        try:
            await node.join(f"http://{listen}/status")
            if during_transfer:
                data = make_bundle({"main.py": os.urandom(60_000)}, "1.1.0")
                code, doc = await asyncio.to_thread(api, f"http://{listen}", t / "data",
                                                    "/ota/rollouts", data,
                                                    {"node": "wl-0001"})
                assert code == 202, doc
                await node.until(lambda: node.have > 2048, "chunks flowing")
            plain: list[int] = []
            prio: list[int] = []
            for i in range(100):
                (prio if i % 10 == 5 else plain).extend(node.records(1, priority=i % 10 == 5))
                await asyncio.sleep(0.05)
            await node.until(lambda: node.acked >= max(plain + prio), "acked", 30)
            if during_transfer:
                assert node.state == "receiving", node.state   # chunks flowed all along
            lat = {s: node.ack_times[s] - node.sent_times[s] for s in plain + prio}
            return {"during_transfer": during_transfer,
                    "median_ms": 1000 * statistics.median(lat.values()),
                    "max_ms": 1000 * max(lat.values()),
                    "priority_median_ms": 1000 * statistics.median(lat[s] for s in prio),
                    "priority_max_ms": 1000 * max(lat[s] for s in prio)}
        finally:
            procs.stop(proc)
            node.close()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                           "load_before": round(os.getloadavg()[0], 2)}
    bundle = builder.build_app(KEY, version="0.2.0", board_names=["sim"],
                               roles=["water"]).encode()
    out["bundle_bytes"] = len(bundle)
    for n in args.serial:
        if n:
            r = out[f"serial_{n}"] = await serial_push(n, bundle)
            print(f"serial, {n} node(s): {r['state']} in {r['seconds']:.1f} s ({r['size']}"
                  f" B payload; a node, OFFER to done: {r['node_seconds_median']:.1f} s"
                  f" median); records/s"
                  f" {r['records_s_before']:.1f} before, {r['records_s_during']:.1f} during;"
                  f" rewinds {r['rewinds']}, offers {r['offers']}", flush=True)
    for n in args.ble:
        if n:
            r = out[f"ble_{n}"] = await ble_push(n, bundle)
            print(f"ble, {n} node(s): {r['state']} in {r['seconds']:.1f} s (a node, OFFER to"
                  f" done: {r['node_seconds_median']:.1f} s median); records/s during"
                  f" {r['records_s_during']:.1f}", flush=True)
    for during in (False, True):
        r = out[f"latency_{'transfer' if during else 'idle'}"] = await latency(during)
        print(f"ACK latency {'during a transfer' if during else 'no transfer'}: median"
              f" {r['median_ms']:.1f} ms, max {r['max_ms']:.1f} ms; priority median"
              f" {r['priority_median_ms']:.1f} ms, max {r['priority_max_ms']:.1f} ms",
              flush=True)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--serial", type=int, nargs="*", default=[1, 20],
                    help="site sizes over serial (0: none)")
    ap.add_argument("--ble", type=int, nargs="*", default=[1], help="site sizes over BLE")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    result = asyncio.run(main(a))
    procs.stop_all()
    if a.json:
        print(json.dumps(result, indent=2))
