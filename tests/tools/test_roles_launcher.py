"""The launcher for every role: node ids and scenarios per role, the demo's distribution of
nodes over roles, and the shipped signal and toll scenario files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from roadside.tools.errors import LaunchError
from roadside.tools.sim.demo import DemoOptions, distribute
from roadside.tools.sim.launcher import SCENARIOS, Simulation, resolve_scenario


def test_mixed_simulation_numbers_nodes_per_role_with_their_scenarios(tmp_path):
    sim = Simulation.mixed(tmp_path, ["water", "signal", "toll", "water"],
                           {"signal": "conflict"}, speed=5, seed=1)
    specs = [(n.spec.node_id, n.spec.role, n.spec.scenario.stem, n.spec.seed)
             for n in sim.nodes]
    assert specs == [("wl-0001", "water", "flood", 2), ("sg-0001", "signal", "conflict", 3),
                     ("tb-0001", "toll", "peak", 4), ("wl-0002", "water", "flood", 5)]
    one = Simulation.for_role(tmp_path, "toll", 2)
    assert [n.spec.node_id for n in one.nodes] == ["tb-0001", "tb-0002"]
    water = Simulation.water(tmp_path, 2)       # unchanged: what the e2e chain tests use
    assert [(n.spec.node_id, n.spec.seed) for n in water.nodes] == [("wl-0001", 2),
                                                                    ("wl-0002", 3)]
    with pytest.raises(LaunchError, match="no role 'bus'"):
        Simulation.for_role(tmp_path, "bus", 1)
    with pytest.raises(LaunchError, match="available: conflict, normal"):
        resolve_scenario("signal", "rush")


def test_demo_distributes_nodes_over_roles_and_keeps_water_default():
    assert distribute(("water", "signal", "toll"), 4) == ["water", "signal", "toll", "water"]
    assert DemoOptions().roles == ("water",)             # DemoOptions: 3 water nodes
    assert distribute(DemoOptions().roles, 3) == ["water"] * 3


def test_demo_roles_option_is_checked():
    p = subprocess.run([sys.executable, "-m", "roadside.tools.cli", "demo", "--roles", "bus"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--roles: bad value 'bus'" in p.stderr


def test_signal_scenarios_are_well_formed():
    for name in ("normal", "conflict"):
        s = json.loads((SCENARIOS / "signal" / f"{name}.json").read_text())
        assert all(len(text) == 4 and set(text) <= set("RAGDXY") for _, text in s["cycle"])
        assert sum(d for d, _ in s["cycle"]) == 68_000
        assert all(len(rates) == 4 for _, rates in s["traffic"]["vph"])
    conflict = json.loads((SCENARIOS / "signal" / "conflict.json").read_text())
    assert conflict["overrides"] == [[20000, 1500, 3, "G"]]


def test_toll_peak_has_close_vehicles_and_double_reads():
    s = json.loads((SCENARIOS / "toll" / "peak.json").read_text())
    tags = [v["tag"] for v in s["vehicles"]]
    assert len(tags) == len(set(tags)) == 24
    assert all(len(t) == 24 and int(t, 16) >= 0 for t in tags)
    assert sum(1 for v in s["vehicles"] if "cross" in v) >= 3
    by_lane: dict[int, list] = {}
    for v in s["vehicles"]:
        by_lane.setdefault(v["lane"], []).append(v)
    close = 0
    for vs in by_lane.values():
        vs.sort(key=lambda v: v["at_ms"])
        for a, b in zip(vs, vs[1:], strict=False):
            end_a = a["at_ms"] + 6.0 / (a["kmh"] / 3.6) * 1000
            close += b["at_ms"] - end_a < 500          # a gap shorter than the window
    assert close >= 3
    assert s["vehicles"][-1]["at_ms"] < s["loop_ms"] - 1000
