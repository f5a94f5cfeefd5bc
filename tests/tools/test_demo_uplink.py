"""`roadside demo --duration S --uplink URL`: the demo drains the gateway's queue into the
user's backend before it stops and says how many records it handed over.

The backend is the reference receiver (`roadside receiver`), a real HTTP server on a loopback
port; the demo runs as the CLI runs it (its own process, real MicroPython nodes, the gateway
daemon).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from roadside.tools.addresses import free_port
from roadside.tools.sim import procs
from roadside.tools.sim.demo import Demo, DemoOptions, Handover, hand_over
from roadside.tools.sim.gateway_toml import GatewaySettings

pytestmark = pytest.mark.slow


def test_demo_hands_every_queued_record_to_the_uplink(tmp_path: Path) -> None:
    rx = procs.start_receiver(tmp_path / "rx.sqlite", tmp_path / "rx.log")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "roadside.tools.cli", "demo", "--duration", "5", "--nodes",
             "2", "--speed", "20", "--uplink", rx.batches_url, "--run-dir", str(tmp_path / "d")],
            capture_output=True, text=True, timeout=90)
        with urllib.request.urlopen(rx.url + "/stats", timeout=5) as resp:
            stats = json.loads(resp.read())
    finally:
        procs.stop(rx.proc)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    m = re.search(r"^handed over (\d+) records to (\S+); gateway queue empty$", proc.stdout,
                  re.M)
    assert m, proc.stdout[-2000:]
    assert m.group(2) == rx.batches_url
    handed = int(m.group(1))
    assert handed > 0 and stats["records"] == handed, (handed, stats)
    assert "delivery is not checked" not in proc.stdout


def test_demo_says_when_the_uplink_cannot_drain_in_time(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/batches"   # nothing listens: every POST fails
    opts = DemoOptions(nodes=1, duration=1, uplink=dead, run_dir=tmp_path / "d", speed=20,
                       drain_timeout=2, settings=GatewaySettings(max_records=50, max_age_s=0.5))

    async def main() -> Handover:
        demo = Demo(opts)
        try:
            async with aiohttp.ClientSession() as session:
                await demo.start()
                deadline = time.monotonic() + 40
                while time.monotonic() < deadline:   # until records wait at the gateway
                    status = await demo._get_json(session, demo.status_url)
                    if status and status["queue"]["depth"] > 0:
                        break
                    await asyncio.sleep(0.25)
                return await hand_over(demo, session)
        finally:
            await demo.stop()

    try:
        handover = asyncio.run(asyncio.wait_for(main(), 80))
    finally:
        procs.stop_all()
    assert not handover.ok and not handover.drained and handover.delivered == 0
    lines = handover.lines()
    assert re.fullmatch(rf"handed over 0 records to {re.escape(dead)}; gateway queue still "
                        r"holds \d+", lines[0]) and handover.queued > 0, lines
    assert lines[1].startswith("gave up waiting after 2 s (uplinks: ") and \
        "the records left stay in the gateway's queue" in lines[1], lines
