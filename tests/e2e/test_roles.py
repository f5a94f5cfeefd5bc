"""A signal monitor and a toll beacon -> the real gateway -> the receiver: every record exactly
once and in order, one toll transaction per passage of the peak scenario, the conflict fault
delivered as a priority record (the alarm), and plan select through the gateway's command API
refused while the fault is latched and accepted once it is cleared."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest
from e2e_harness import options, run_chain, wait_until
from test_chain import assert_exactly_once

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def rows(db: Path, sql: str, *args) -> list:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:   # the receiver has not created its tables yet
        return []
    finally:
        con.close()


async def command(demo, session: aiohttp.ClientSession, node: str, name: str,
                  args: dict | None = None) -> dict:
    base = demo.status_url.rsplit("/status", 1)[0]
    token = (demo.run_dir / "gateway-data" / "api.token").read_text().strip()
    async with session.post(f"{base}/nodes/{node}/commands",
                            json={"name": name, "args": args, "who": "test_roles"},
                            headers={"Authorization": f"Bearer {token}"},
                            timeout=aiohttp.ClientTimeout(total=20)) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def test_signal_and_toll_nodes_exactly_once_with_fault_and_transactions(tmp_path):
    peak = json.loads((REPO / "scenarios" / "toll" / "peak.json").read_text())
    peak["loop_ms"] = 0                       # every vehicle passes once
    once = tmp_path / "peak-once.json"
    once.write_text(json.dumps(peak))
    tags = sorted(v["tag"] for v in peak["vehicles"])
    db = tmp_path / "run" / "receiver.sqlite"
    seen: dict = {}

    async def body(demo, session):
        async def fault_arrived() -> bool:
            return bool(rows(db, "SELECT 1 FROM records WHERE node='sg-0001' AND kind='fault'"))

        await wait_until(fault_arrived, 30, "the conflict fault at the receiver")
        seen["refused"] = await command(demo, session, "sg-0001", "plan.select", {"plan": 2})
        deadline = time.monotonic() + 20
        while True:   # the fault can be cleared once the conflicting green has gone
            seen["clear"] = await command(demo, session, "sg-0001", "fault.clear")
            if seen["clear"]["ok"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        refusals = []
        while time.monotonic() < deadline:   # accepted outside clearance (amber / all red)
            reply = await command(demo, session, "sg-0001", "plan.select", {"plan": 2})
            if reply["ok"]:
                seen["plan"] = reply
                break
            refusals.append(reply["error"])
            await asyncio.sleep(0.2)
        seen["refusals"] = refusals

        async def all_passages() -> bool:
            n = rows(db, "SELECT count(*) FROM records WHERE node='tb-0001' AND "
                         "kind='transaction'")
            return bool(n) and n[0][0] >= len(tags)

        await wait_until(all_passages, 30, "every toll transaction at the receiver")
        await asyncio.sleep(1.0)   # a late duplicate would show up now

    opts = options(tmp_path, nodes=2, roles=("signal", "toll"),
                   scenarios={"signal": "conflict", "toll": str(once)})
    started = time.monotonic()
    summary = run_chain(opts, body)
    assert time.monotonic() - started < 90
    assert_exactly_once(summary, 2)

    txns = rows(db, "SELECT data, priority FROM records WHERE node='tb-0001' AND "
                    "kind='transaction' ORDER BY seq")
    assert sorted(json.loads(d)["tag"] for d, _ in txns) == tags   # one per passage
    assert all(p == 1 for _, p in txns)
    lanes = {v["tag"]: v["lane"] for v in peak["vehicles"]}
    assert all(json.loads(d)["lane"] == lanes[json.loads(d)["tag"]] for d, _ in txns)

    faults = [(json.loads(d), p) for d, p in rows(
        db, "SELECT data, priority FROM records WHERE node='sg-0001' AND kind='fault' "
            "ORDER BY seq")]
    first, priority = faults[0]
    assert priority == 1
    assert (first["fault"], first["phase"], first["other_phase"], first["at_ms"]) == \
        ("conflict", 2, 3, 20000)
    assert first["latency_ms"] <= 100                   # within one debounce period

    assert seen["refused"]["ok"] is False and "latched" in seen["refused"]["error"]
    assert seen["clear"]["ok"] is True, seen["clear"]
    assert seen["clear"]["result"]["cleared"] == "conflict"
    assert [f["fault"] for f, _ in faults] == ["conflict", "cleared"]
    assert seen.get("plan", {}).get("ok") is True, seen["refusals"]
    assert all("clearance in progress" in e for e in seen["refusals"])
    plans = rows(db, "SELECT data FROM records WHERE node='sg-0001' AND kind='plan'")
    assert [json.loads(d)["plan"] for d, in plans] == [2]
    log = (tmp_path / "run" / "nodes" / "sg-0001" / "plan_select.log").read_text().split()
    assert log[1::2] == ["2"]                            # what the controller was told
    kinds = {k for k, in rows(db, "SELECT DISTINCT kind FROM records WHERE node='sg-0001'")}
    assert {"phase", "fault", "plan", "health"} <= kinds


def test_rain_gauge_beside_the_water_level_node_through_the_gateway(tmp_path):
    """The fourth role in the demo's chain: the storm scenario's rainfall per interval and its
    intensity alarm (a priority record) reach the receiver, beside the water level node's
    flood, every record of both exactly once."""
    db = tmp_path / "run" / "receiver.sqlite"

    async def body(demo, session):
        async def storm_arrived() -> bool:
            return bool(rows(db, "SELECT 1 FROM records WHERE node='rg-0001' AND "
                                 "kind='intensity'")) and \
                bool(rows(db, "SELECT 1 FROM records WHERE node='wl-0001' AND kind='alarm'"))

        await wait_until(storm_arrived, 30, "the storm's intensity alarm and the flood alarm")

    opts = options(tmp_path, nodes=2, roles=("water", "rain"))
    summary = run_chain(opts, body)
    assert_exactly_once(summary, 2)
    rain = [(json.loads(d), r) for d, r in rows(
        db, "SELECT data, role FROM records WHERE node='rg-0001' AND kind='rainfall' "
            "ORDER BY seq")]
    assert rain and all(r == "rain" for _, r in rain)
    total = 0
    for data, _ in rain:                 # uplink names from the role table, counts that add up
        total += data["tips"]
        assert data["total_tips"] == total and data["interval_s"] >= 60
        assert data["mm"] == pytest.approx(data["tips"] * 0.2)
    alarm = rows(db, "SELECT data, priority FROM records WHERE node='rg-0001' AND "
                     "kind='intensity' ORDER BY seq")[0]
    assert json.loads(alarm[0])["state"] == "heavy" and alarm[1] == 1
