"""Updates over the air end to end: a real MicroPython node (sim_main.py on the unix port,
its LittleFS flash image, the ota key in its flash) on a virtual cable, the gateway daemon as
a subprocess, and `roadside ota push` from the command line: the app bundle built by
`roadside ota build` (mpy-cross) is transferred in paced chunks while the node keeps
reporting, switched, booted on trial and confirmed; the node's HELLO then carries the new
version. A second push of the same version is refused by the node (`version`) and halts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from roadside.tools.ota import bundle as builder
from roadside.tools.sim import procs
from roadside.tools.sim.gateway_toml import GatewaySettings, write
from roadside.tools.sim.launcher import DEFAULT_SCENARIO, Simulation
from support.cli import roadside
from support.gateway_status import link_open, status

KEY = bytes(range(32))
TEST_TIMEOUT_S = 150.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


def test_app_update_of_a_real_node_over_serial_with_the_cli(tmp_path: Path) -> None:
    rsb = tmp_path / "app-0.2.0.rsb"
    builder.write(builder.build_app(KEY, version="0.2.0", board_names=["sim"],
                                    roles=["water"]), rsb)
    sim = Simulation.water(tmp_path / "run", 1, scenario="flood", speed=20.0)
    node = sim.nodes[0]
    node.spec.ota_key = KEY
    listen = f"127.0.0.1:{_free_port()}"
    url = f"http://{listen}/status"
    proc = None

    async def main() -> None:
        nonlocal proc
        await node.start()
        # 921,600 baud: the pacing's half of it lets a ~100 KB bundle go in a few seconds.
        cfg = write(tmp_path / "gw.toml", [node.gateway_path], tmp_path / "data", None, listen,
                    GatewaySettings(baudrate=921600, ota_retry_s=1.0))   # busy in the flood
        proc, _ = await asyncio.to_thread(procs.start_gateway, cfg, tmp_path / "gw.log")
        await link_open(url, node.gateway_path)

        async def fw() -> str | None:
            nodes = (await asyncio.to_thread(status, url))["nodes"]
            return nodes[0]["fw"] if nodes else None

        await _until(lambda: _is(fw, "0.1.0"), 60, "the node's HELLO with fw 0.1.0")
        before = (await asyncio.to_thread(status, url))["nodes"][0]["records"]
        code, out, err = await roadside("ota", "push", str(rsb), "--config", str(cfg),
                                        "--node", "wl-0001", timeout=120)
        assert code == 0, err + (tmp_path / "gw.log").read_text()[-3000:]
        assert err.splitlines()[-1] == "rollout 1 done: 1 nodes run 0.2.0", err
        await _until(lambda: _is(fw, "0.2.0"), 30, "the node's HELLO with fw 0.2.0")
        doc = await asyncio.to_thread(status, url)
        # It kept reporting while it received, and after the switch.
        assert doc["nodes"][0]["records"] > before
        (r,) = doc["ota"]["rollouts"]
        assert r["state"] == "done" and r["nodes"][0]["state"] == "done"
        assert r["nodes"][0]["chunks"] >= r["size"] // 512

        # The same version again: the node refuses it (not newer); the rollout halts.
        code, out, err = await roadside("ota", "push", str(rsb), "--config", str(cfg),
                                        "--node", "wl-0001", timeout=60)
        assert code == 1 and "rollout 2 halted: wl-0001: refused: version" in err, err

    async def _is(get, want) -> bool:
        return await get() == want

    async def run() -> None:
        try:
            await main()
        finally:
            await node.stop()

    try:
        asyncio.run(asyncio.wait_for(run(), TEST_TIMEOUT_S))
    finally:
        if proc is not None:
            procs.stop(proc)
        print((tmp_path / "run" / "logs" / "wl-0001.log").read_text()[-3000:])


@pytest.mark.parametrize("role", ["water", "signal", "toll", "rain"])
def test_app_update_of_a_real_node_over_ble(tmp_path: Path, role: str) -> None:
    """The same update over Bluetooth LE, each role: the node's BLE code on bumble's virtual
    radio, the gateway's BleLink (sealed frames), the rollout started on the local API."""
    import dataclasses

    from roadside.gateway.config import OtaConfig
    from support.ble_rig import BleRig
    from support.ota_node import api

    # The node runs at a BLE node's board heap (launcher.BLE_HEAPSIZE): the BLE link's
    # 192-byte chunks, the handshake dropped after AUTH and the switch without an import are
    # what fit it (docs/PERFORMANCE.md "OTA over BLE: the heap it needs").
    data = builder.build_app(KEY, version="0.2.0", board_names=["sim"],
                             roles=[role]).encode()
    rig = BleRig(tmp_path, nodes=1, role=role, scenario=DEFAULT_SCENARIO[role])

    async def main() -> None:
        await rig.start(ota_key=KEY)
        config = rig.gateway_config(None)
        # the BLE link's rate from its MTU (4,880 B/s at 247): take all of it here; a node
        # in the flood's alarm answers busy: offered again after 1 s
        config = dataclasses.replace(config, ota=OtaConfig(link_share=1.0, retry_s=1.0))
        await rig.start_gateway(config)
        base = rig.status_url.removesuffix("/status")

        async def fw() -> str | None:
            try:
                nodes = (await asyncio.to_thread(status, rig.status_url))["nodes"]
            except OSError:
                return None
            return nodes[0]["fw"] if nodes else None

        await _until(lambda: _eq(fw(), "0.1.0"), 60, "the node's HELLO over BLE")
        code, doc = await asyncio.to_thread(api, base, config.gateway.data_dir,
                                            "/ota/rollouts", data, {"node": rig.node_id(1)})
        assert code == 202, doc

        async def done() -> bool:
            code, doc = await asyncio.to_thread(api, base, config.gateway.data_dir,
                                                "/ota/rollouts/1")
            assert doc["state"] in ("running", "done"), doc
            return bool(doc["state"] == "done")

        await _until(done, 90, "the rollout over BLE")
        await _until(lambda: _eq(fw(), "0.2.0"), 30, "the node's HELLO with fw 0.2.0")

    async def run() -> None:
        try:
            await main()
        finally:
            await rig.stop()
            print(rig.logs())

    asyncio.run(asyncio.wait_for(run(), TEST_TIMEOUT_S))


async def _eq(value, want) -> bool:
    return await value == want


def test_a_real_node_resumes_after_the_gateway_is_killed_mid_transfer(tmp_path: Path) -> None:
    """kill -9 of the gateway daemon halfway through: a new daemon takes the rollout up from
    data_dir/ota.sqlite, asks the node (ota.state after its HELLO) and sends only what the
    node does not hold yet."""
    import urllib.request

    rsb = tmp_path / "app-0.2.0.rsb"
    builder.write(builder.build_app(KEY, version="0.2.0", board_names=["sim"],
                                    roles=["water"]), rsb)
    sim = Simulation.water(tmp_path / "run", 1, scenario="calm", speed=20.0)
    node = sim.nodes[0]
    node.spec.ota_key = KEY
    listen = f"127.0.0.1:{_free_port()}"
    url = f"http://{listen}/status"
    procs_: list = []

    async def main() -> None:
        await node.start()
        # 230,400 baud: ~6 s for the bundle, time to kill the gateway halfway
        cfg = write(tmp_path / "gw.toml", [node.gateway_path], tmp_path / "data", None, listen,
                    GatewaySettings(baudrate=230400))
        proc, _ = await asyncio.to_thread(procs.start_gateway, cfg, tmp_path / "gw1.log")
        procs_.append(proc)
        await link_open(url, node.gateway_path)

        async def hello() -> bool:
            return bool((await asyncio.to_thread(status, url))["nodes"])

        await _until(hello, 60, "the node's HELLO")
        code, _, err = await roadside("ota", "push", str(rsb), "--config", str(cfg),
                                      "--node", "wl-0001", "--no-wait")
        assert code == 0, err

        async def half() -> bool:
            r = (await asyncio.to_thread(status, url))["ota"]["rollouts"][0]["nodes"][0]
            return bool(r["percent"] >= 45)

        await _until(half, 60, "half the bundle at the node")
        await asyncio.to_thread(procs.kill, proc)
        size = rsb.stat().st_size
        proc, _ = await asyncio.to_thread(procs.start_gateway, cfg, tmp_path / "gw2.log")
        procs_.append(proc)

        async def done() -> bool:
            try:
                doc = (await asyncio.to_thread(status, url))["ota"]
            except OSError:
                return False
            return bool(doc["rollouts"] and doc["rollouts"][0]["state"] == "done")

        await _until(done, 60, "the rollout resumed and done")
        with urllib.request.urlopen(url.replace("/status", "/metrics"), timeout=5) as resp:
            metrics = resp.read().decode()
        sent = next(float(line.split()[-1]) for line in metrics.splitlines()
                    if line.startswith("roadside_ota_chunk_bytes_total"))
        # the new daemon sent what the node lacked (from its last verified 8 KiB piece on)
        assert 0 < sent < 0.7 * size, (sent, size)
        assert "resumed" in (tmp_path / "gw2.log").read_text()

    async def run() -> None:
        try:
            await main()
        finally:
            await node.stop()

    try:
        asyncio.run(asyncio.wait_for(run(), TEST_TIMEOUT_S))
    finally:
        for p in procs_:
            procs.stop(p)
