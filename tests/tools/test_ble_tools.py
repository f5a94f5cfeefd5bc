"""The installer's BLE tools against real MicroPython nodes on virtual radios: `roadside scan`
(ids, roles, status, RSSI; text and JSON) and BleSerial, which lets the serial tools' NodeLink
(`roadside config` / `monitor`) talk to a node over an authenticated BLE session; secret.set
is refused over BLE."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from roadside.tools import ble_transport, cmd_scan
from roadside.tools.node_link import CommandFailed, NodeLink
from support.ble_rig import BleRig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[BleRig, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    r = BleRig(tmp_path, nodes=2, speed=5.0)

    def call(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)
    try:
        call(r.start())
        yield r, loop
    finally:
        call(r.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_scan_lists_nodes(rig: tuple[BleRig, asyncio.AbstractEventLoop]) -> None:
    r, loop = rig
    assert r.backend is not None
    backend = (r.backend.scanner, r.backend.client)
    nodes = asyncio.run_coroutine_threadsafe(
        ble_transport.scan(1.5, backend=backend, site="bd-test"), loop).result(20)
    assert [a.node for a in sorted(nodes, key=lambda a: a.node)] == ["wl-0001", "wl-0002"]
    lines: list[str] = []
    cmd_scan.render(nodes, False, lines.append)
    assert all("water" in x and "dBm" in x and "battery 80%" in x for x in lines), lines
    out: list[str] = []
    cmd_scan.render(nodes, True, out.append)
    doc = json.loads(out[0])
    assert {d["node"] for d in doc} == {"wl-0001", "wl-0002"}
    assert all(d["rssi"] < 0 and d["provisioned"] and not d["alarm"] for d in doc)
    other = asyncio.run_coroutine_threadsafe(
        ble_transport.scan(1.0, backend=backend, site="elsewhere"), loop).result(20)
    assert other == []


def test_config_over_ble(rig: tuple[BleRig, asyncio.AbstractEventLoop], tmp_path: Path) -> None:
    r, loop = rig
    assert r.backend is not None
    files = r.write_secrets()
    ser = ble_transport.BleSerial.open("wl-0002", files[1], loop=loop,
                                       backend=(r.backend.scanner, r.backend.client))
    with NodeLink("ble:wl-0002", ser=ser) as link:
        info = link.command("info")
        assert info["node"] == "wl-0002" and info["ble"]["auth_ok"] == 1
        assert link.command("config.set", {"key": "report_interval_s", "value": 30}) == 30
        assert link.command("config.get", {"key": "report_interval_s"}) == 30
        with pytest.raises(CommandFailed, match="refused over BLE"):
            link.command("secret.set", {"secret": "00" * 32})
    cfg = json.loads((r.nodes[1].dir / "config.json").read_text())
    assert cfg["report_interval_s"] == 30
    wrong = tmp_path / "wrong.key"
    wrong.write_text("11" * 32)
    with pytest.raises(ble_transport.BleError, match="authentication with wl-0001 failed"):
        ble_transport.BleSerial.open("wl-0001", wrong, loop=loop,
                                     backend=(r.backend.scanner, r.backend.client))
