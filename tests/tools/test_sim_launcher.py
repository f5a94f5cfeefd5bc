"""The node launcher: NODE_DIR (flash image, wiring), restart on exit 3, clean stop.

The launcher is exercised with a tiny stand-in entry script under the real MicroPython (the
firmware has its own tests; here we test what the launcher does around any firmware).
"""

from __future__ import annotations

import asyncio
import json
import os
import termios
import tty
from pathlib import Path

import pytest
from roadside.tools.errors import LaunchError
from roadside.tools.sim.launcher import NodeSpec, Simulation, node_id, resolve_scenario

FAKE_BOARD = Path(__file__).with_name("fake_board.py")


async def read_until(fd: int, want: bytes, timeout: float = 20.0) -> bytes:
    buf = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while want not in buf:
        try:
            buf += os.read(fd, 1024)
        except BlockingIOError:
            if loop.time() > deadline:
                raise TimeoutError(f"no {want!r} in {buf!r}") from None
            await asyncio.sleep(0.02)
    return buf


def test_nodes_boot_reset_and_stop(tmp_path: Path):
    specs = [NodeSpec(node_id("water", i), "water", FAKE_BOARD, speed=30, seed=i,
                      config={"thresholds": {"alert_cm": 50}}) for i in (1, 2)]
    sim = Simulation(tmp_path, specs, entry=FAKE_BOARD)
    pids: list[int] = []

    async def main():
        await sim.start()
        try:
            for node in sim.nodes:
                fd = os.open(node.gateway_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
                tty.setraw(fd, termios.TCSANOW)
                try:
                    name = node.spec.node_id.encode()
                    seen = await read_until(fd, name + b" boot 2\n")
                    assert name + b" boot 1\n" in seen
                finally:
                    os.close(fd)
                assert node.resets == 1 and node.state == "running"
                pids.append(node.proc.pid)
        finally:
            await sim.stop()

    asyncio.run(main())
    node_dir = tmp_path / "nodes" / "wl-0002"
    config = sim.node("wl-0002").flash.get_json("config.json")   # in the node's flash
    assert config["node_id"] == "wl-0002" and config["role"] == "water"
    assert config["thresholds"] == {"alert_cm": 50} and "sim" not in config
    assert sim.node("wl-0002").flash.get("boots") == b"2"
    wiring = json.loads((node_dir / "wiring.json").read_text())  # outside it, as on a board
    assert wiring["sim"]["speed"] == 30 and wiring["sim"]["seed"] == 2
    assert wiring["sim"]["uart"].startswith("/dev/pts/")
    assert sorted(p.name for p in node_dir.iterdir()) == ["flash.img", "wiring.json"]
    log = (tmp_path / "logs" / "wl-0001.log").read_text()
    assert "booted 1" in log and "booted 2" in log
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_unknown_scenario_names_the_available_ones():
    with pytest.raises(LaunchError, match="no scenario 'nope' for role 'water'; available"):
        resolve_scenario("water", "nope")
