"""BLE test rig: real MicroPython nodes (firmware/sim_main.py with `ble` on) whose BLE code
drives bumble peripherals through tools/sim/ble_bridge.py, a virtual central for the gateway's
bleak code (tests/support/bleak_bumble.py), and the gateway daemon in this process. Loopback
only; `stop()` ends every process and closes every pty.

    rig = BleRig(tmp_path, nodes=3)
    await rig.start()                              # nodes advertise
    config = rig.gateway_config(receiver.batches_url)
    await rig.start_gateway(config)                # daemon.main with the bumble backend
    ...
    await rig.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path
from typing import Any

from roadside.gateway import daemon
from roadside.gateway.config import GatewayConfig, parse
from roadside.tools.sim.ble_bridge import NodeBridge, VirtualAir
from roadside.tools.sim.launcher import (
    FIRMWARE,
    NodeSpec,
    SimNode,
    build_mpy,
    resolve_scenario,
)
from roadside.tools.sim.vflash import VFlash

from .bleak_bumble import BumbleBackend


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def secret_for(i: int) -> bytes:
    """A fixed per-node test secret (node i = 1, 2, ...)."""
    return bytes((i * 7 + k) & 0xFF for k in range(32))


class BleRig:
    def __init__(self, tmp: Path, nodes: int = 1, speed: float = 20.0, role: str = "water",
                 scenario: str = "flood", config: dict[str, Any] | None = None,
                 site: str = "bd-test") -> None:
        self.tmp = tmp
        self.count = nodes
        self.speed = speed
        self.role = role
        self.scenario = resolve_scenario(role, scenario)
        self.extra = config or {}
        self.site = site
        self.air = VirtualAir()
        self.backend: BumbleBackend | None = None
        self.bridges: list[NodeBridge] = []
        self.nodes: list[SimNode] = []
        self.stop_event = asyncio.Event()
        self.gateway_task: asyncio.Task[int] | None = None
        self.status_port = free_port()

    def node_id(self, i: int) -> str:
        return f"wl-{i:04d}"

    async def start(self, prefill: int = 0, ota_key: bytes | None = None) -> None:
        """Start the nodes; `prefill` records are put in each journal first (a backlog);
        `ota_key`: in each node's flash (it accepts bundles made with it)."""
        mpy = build_mpy()
        self.backend = await BumbleBackend.create(self.air)
        for i in range(1, self.count + 1):
            node = self.node_id(i)
            bridge = NodeBridge(self.air, f"F0:00:00:00:00:{i:02X}", node)
            await bridge.start()
            self.bridges.append(bridge)
            # the whole sim section: SimNode.write_config replaces it with ours
            cfg = {"ble": True, "site": self.site, **self.extra,
                   "sim": {"ble": bridge.node_path, "battery_pct": 80,
                           "scenario": str(self.scenario), "speed": self.speed, "seed": i}}
            spec = NodeSpec(node, self.role, self.scenario, self.speed, seed=i, config=cfg,
                            ota_key=ota_key)
            sim = SimNode(spec, self.tmp / "run", mpy=mpy)
            await asyncio.to_thread(sim.flash.put, "secret.bin", secret_for(i))  # provisioned
            if prefill:
                await self._prefill(sim.flash, prefill, mpy)
            await sim.start()
            self.nodes.append(sim)

    async def _prefill(self, flash: VFlash, n: int, mpy: Path | None) -> None:
        """Append n level records to the node's journal (in its flash image) with the
        firmware's own Journal."""
        code = (f"import sys\nsys.path.insert(0, {'/host' + str(mpy or FIRMWARE)!r})\n"
                "from roadside_node.journal import Journal\n"
                f"j = Journal(max_bytes={self.extra.get('journal_max_bytes', 262144)})\n"
                "j.load()\n"
                f"for i in range({n}):\n"
                "    j.append(1000 + i, 1, 1, {1: 12.5 + i % 7, 2: 0.25, 3: 2875})\n"
                "j.close()\n")
        await asyncio.to_thread(flash.run, code, "256k")

    def write_secrets(self) -> list[Path]:
        out = []
        for i in range(1, self.count + 1):
            path = self.tmp / "secrets" / f"{self.node_id(i)}.key"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secret_for(i).hex() + "\n")
            os.chmod(path, 0o600)
            out.append(path)
        return out

    def gateway_config(self, uplink_url: str | None, max_connections: int = 8,
                       hold_s: float = 30.0, secrets: dict[str, Path] | None = None,
                       max_records: int = 50) -> GatewayConfig:
        files = self.write_secrets()
        links = []
        for i in range(1, self.count + 1):
            node = self.node_id(i)
            path = (secrets or {}).get(node, files[i - 1])
            links.append({"type": "ble", "node": node, "secret_file": str(path)})
        raw: dict[str, Any] = {
            "gateway": {"id": "gw-ble", "site": self.site,
                        "data_dir": str(self.tmp / "gw")},
            "link": links,
            "batch": {"max_records": max_records, "max_age_s": 0.3},
            "status": {"listen": f"127.0.0.1:{self.status_port}"},
            "ble": {"max_connections": max_connections, "hold_s": hold_s},
        }
        if uplink_url:
            raw["uplink"] = [{"type": "http", "url": uplink_url}]
        config = parse(raw, self.tmp)
        config.gateway.data_dir.mkdir(parents=True, exist_ok=True)
        return config

    async def start_gateway(self, config: GatewayConfig) -> None:
        assert self.backend is not None
        self.stop_event = asyncio.Event()
        self.gateway_task = asyncio.create_task(daemon.main(
            config, self.stop_event, ble_backend=(self.backend.scanner, self.backend.client)))

    async def stop_gateway(self) -> int | None:
        if self.gateway_task is None:
            return None
        self.stop_event.set()
        try:
            return await asyncio.wait_for(self.gateway_task, 15)
        finally:
            self.gateway_task = None

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}/status"

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.stop_gateway()
        await asyncio.gather(*(n.stop() for n in self.nodes), return_exceptions=True)
        for b in self.bridges:
            await b.close()
        await self.air.close()

    def logs(self) -> str:
        out = []
        for n in self.nodes:
            text = n.log.read_text(errors="replace") if n.log.exists() else ""
            out.append(f"--- {n.spec.node_id}\n" + "\n".join(text.splitlines()[-20:]))
        return "\n".join(out)
