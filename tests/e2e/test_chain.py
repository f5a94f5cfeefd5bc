"""Nodes -> gateway -> receiver: every record each node produced arrives exactly once, in order."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from e2e_harness import gateway_status, options, received_records, run_chain, wait_until
from roadside.tools.sim import procs

pytestmark = pytest.mark.slow


def assert_exactly_once(summary, nodes: int) -> None:
    assert len(summary.nodes) == nodes
    for n in summary.nodes:
        assert n.produced > 0, f"{n.node} produced nothing"
        assert n.missing == [], f"{n.node} missing {n.missing[:10]}"
        assert n.out_of_order == 0, f"{n.node}: {n.out_of_order} records out of order"
        # a record the node was sending when it was stopped stays in its journal (held)
        assert n.delivered + n.held == n.produced, n
    assert summary.duplicate_records == 0
    assert summary.ok


def test_three_nodes_every_record_once_in_order(tmp_path):
    async def body(demo, session):
        await asyncio.sleep(8)

    summary = run_chain(options(tmp_path), body)
    assert_exactly_once(summary, 3)
    kinds = {r["kind"] for r in received_records(tmp_path / "run" / "receiver.sqlite")}
    assert "level" in kinds


def test_gateway_killed_and_restarted_still_exactly_once(tmp_path):
    async def body(demo, session):
        await wait_until(lambda: _has_records(demo, session), 30, "records at the receiver")
        procs.kill(demo.gateway)           # kill -9: no clean shutdown, no final flush
        await asyncio.sleep(2)             # nodes keep journaling while it is down
        demo.start_gateway()
        await wait_until(lambda: _status_up(demo, session), 30, "the restarted gateway")
        await asyncio.sleep(4)

    assert_exactly_once(run_chain(options(tmp_path), body), 3)


def test_receiver_failing_30_percent_still_exactly_once(tmp_path):
    async def body(demo, session):
        await asyncio.sleep(8)
        stats = await demo._get_json(session, demo.receiver.url + "/stats")
        assert stats and stats["failed_on_purpose"] > 0, "the receiver never refused a batch"

    assert_exactly_once(run_chain(options(tmp_path, fail_rate=0.3), body), 3)


def test_noise_on_a_cable_is_counted_and_loses_nothing(tmp_path):
    before: dict = {}

    async def body(demo, session):
        await wait_until(lambda: _has_records(demo, session), 30, "records at the receiver")
        before.update(await gateway_status(demo, session) or {})
        cable = demo.sim.nodes[0].cable
        cable.inject(b"\x00\x13\x37garbage\x00" * 3)   # three junk frames
        cable.set_bit_flips(0.002, seed=7)              # then a noisy line for a while
        await asyncio.sleep(4)
        cable.set_bit_flips(0)
        await asyncio.sleep(3)
        before["after"] = await gateway_status(demo, session)

    summary = run_chain(options(tmp_path), body)
    assert_exactly_once(summary, 3)
    assert corrupt_frames(before["after"]) > corrupt_frames(before), before["after"]


def test_demo_command_runs_and_reports_success(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "roadside.tools.cli", "demo", "--duration", "10", "--nodes", "2",
         "--speed", "20", "--run-dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "RESULT: every record arrived exactly once, in order" in proc.stdout
    assert "wl-0001" in proc.stdout and "wl-0002" in proc.stdout
    assert "\x1b[" not in proc.stdout  # not a TTY: plain progress lines, no redrawing


async def _has_records(demo, session) -> bool:
    stats = await demo._get_json(session, demo.receiver.url + "/stats")
    return bool(stats and stats["records"] > 0)


async def _status_up(demo, session) -> bool:
    assert demo.gateway.poll() is None, demo.gateway_died()
    return await gateway_status(demo, session) is not None


def corrupt_frames(status: dict) -> int:
    """Sum the gateway's frame-error counters (crc, cobs, oversize, malformed) over links."""
    total = 0

    def walk(obj, key=""):
        nonlocal total
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, k)
        elif isinstance(obj, list):
            for v in obj:
                walk(v, key)
        elif isinstance(obj, int) and key in ("crc", "cobs", "oversize", "malformed"):
            total += obj

    walk((status or {}).get("links"))
    return total
