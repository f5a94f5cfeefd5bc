"""The signal monitor under MicroPython (small heap, precompiled firmware): the scenarios'
heads through the simulated intersection (hw/sim_signal.py) into roles/signal.py, with exact
expected records: phase changes, counts, faults within one debounce period, the timing checks,
and plan select refused during clearance and while a fault is latched."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from support.mpy import build, run_driver

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios" / "signal"

DRIVER = r"""
import json
from roadside_node.config import Config
from roadside_node.roles.signal import SignalRole
from roadside_node.hw.sim_signal import SignalSim
with open("args.json") as f:
    ARGS = json.load(f)
cfg = Config(ARGS["config"])
sim = SignalSim(ARGS["scenario"], cfg.get("phases"), cfg.get("debounce_ms"))
del ARGS["scenario"]


class HW:
    now = 0

    def signal_samples(self):
        return sim.samples(self.now)

    def loop_counts(self):
        return sim.loop_counts(self.now)

    def plan_select(self, plan):
        print(json.dumps(["plan_out", self.now, plan]))

    def fault_output(self, active):
        print(json.dumps(["fault_out", self.now, active]))


def emit(kind, flags, body):
    print(json.dumps([kind, flags, body]))
    return 1


hw = HW()
role = SignalRole(cfg, emit, hw)
cmds = ARGS["commands"]
step = ARGS["step_ms"]
for now in range(0, ARGS["end_ms"], step):
    hw.now = now
    role.step(now / 1000)
    while cmds and cmds[0][0] <= now:
        _, name, args = cmds.pop(0)
        try:
            print(json.dumps(["reply", now, name, True, role.command(name, args)]))
        except ValueError as e:
            print(json.dumps(["reply", now, name, False, str(e)]))
import gc
gc.collect()
print(json.dumps(["free", gc.mem_free()]))
"""


@pytest.fixture(scope="module")
def mpy(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("mpy"))


def scenario(name: str) -> dict:
    return json.loads((SCENARIOS / f"{name}.json").read_text())


def run(mpy: Path, scen: dict, end_ms: int, *, config: dict | None = None,
        commands: list | None = None, step_ms: int = 400) -> list:
    args = {"scenario": scen, "config": config or {}, "commands": commands or [],
            "end_ms": end_ms, "step_ms": step_ms}
    out = run_driver(DRIVER, mpy, Path(tempfile.mkdtemp(dir=mpy.parent)), args)
    return [json.loads(line) for line in out.splitlines()]


def records(out: list, kind: int) -> list:
    return [r for r in out if r[0] == kind]


def test_normal_cycle_phase_changes_and_rush_hour_counts(mpy):
    out = run(mpy, scenario("normal"), 140_000)
    assert records(out, 11) == []                                   # no fault in 2 cycles
    phases = [(b["1"], b["3"], b["2"], b["4"], b["5"]) for _, f, b in records(out, 10)]
    # the first readings (start unknown), then the cycle with exact edges and durations
    assert phases[:4] == [(1, "unknown", "green", 0, 0), (2, "unknown", "red", 0, 0),
                          (3, "unknown", "red", 0, 0), (4, "unknown", "red", 0, 0)]
    assert phases[4:11] == [
        (1, "green", "amber", 0, 12000), (1, "amber", "red", 3500, 15500),
        (2, "red", "green", 0, 17000), (2, "green", "amber", 12000, 29000),
        (2, "amber", "red", 3500, 32500), (3, "red", "green", 0, 34000),
        (3, "green", "amber", 12000, 46000)]
    assert (1, "red", "green", 52500, 68000) in phases   # red while the 3 others ran
    counts = [(b["1"], b["2"], b["3"]) for _, f, b in records(out, 12)]
    # rush hour: 500/300/450/250 veh/h for the first minute, 900/550/800/450 the next
    assert counts[:8] == [(1, 8, 60), (2, 5, 60), (3, 7, 60), (4, 4, 60),
                          (1, 15, 60), (2, 9, 60), (3, 13, 60), (4, 7, 60)]
    assert all(r[1] == 0 for r in records(out, 10) + records(out, 12))
    assert out[-1][0] == "free" and out[-1][1] > 4096


def test_conflicting_green_is_a_latched_priority_fault_within_one_debounce(mpy):
    cmds = [[20_500, "fault.clear", {}], [24_000, "plan.select", {"plan": 3}],
            [24_400, "fault.clear", {}], [24_800, "plan.select", {"plan": 3}],
            [30_000, "plan.select", {"plan": 4}], [33_200, "plan.select", {"plan": 4}],
            [36_000, "plan.select", {"plan": 9}], [36_000, "plan.select", {"plan": 4}]]
    out = run(mpy, scenario("conflict"), 40_000, commands=cmds, step_ms=20)
    faults = records(out, 11)
    assert faults[0] == [11, 2, {"1": "conflict", "2": 2, "3": 3, "4": 0, "5": 0, "6": 20000,
                                 "7": 100}]
    assert faults[0][2]["7"] <= 100                     # detected within one debounce period
    # the green->red of phase 3 without amber at 21.5 s is counted, not recorded: latched
    assert faults[1] == [11, 2, {"1": "cleared", "2": 2, "3": 3, "6": 24400}]
    assert len(faults) == 2
    replies = [(r[1], r[2], r[3], r[4]) for r in out if r[0] == "reply"]
    assert replies[0][:3] == (20_500, "fault.clear", False)
    assert "phases 2 and 3 both green/green" in replies[0][3]
    assert replies[1][:3] == (24_000, "plan.select", False)
    assert "fault conflict on phase 2 is latched" in replies[1][3]
    assert replies[2] == (24_400, "fault.clear", True,
                          {"cleared": "conflict", "phase": 2, "suppressed": 1})
    assert replies[3] == (24_800, "plan.select", True, {"plan": 3, "previous": 0})
    assert replies[4][:3] == (30_000, "plan.select", False)
    assert "clearance in progress (amber on phase 2)" in replies[4][3]
    assert replies[5][:3] == (33_200, "plan.select", False)
    assert "clearance in progress (all red)" in replies[5][3]
    assert replies[6][:3] == (36_000, "plan.select", False) and "1 to 8" in replies[6][3]
    assert replies[7] == (36_000, "plan.select", True, {"plan": 4, "previous": 3})
    assert [r for r in out if r[0] == "plan_out"] == [["plan_out", 24_800, 3],
                                                      ["plan_out", 36_000, 4]]
    assert [(b["1"], b["2"]) for _, f, b in records(out, 13)] == [(3, 0), (4, 3)]
    assert [r[1:] for r in out if r[0] == "fault_out"] == [[20_100, True], [24_400, False]]


def two_phase(green1=12000, amber1=3500, red1=1500, green2=12000, amber2=3500, red2=1500,
              **extra) -> dict:
    cycle = [[green1, "GR"], [amber1, "AR"], [red1, "RR"],
             [green2, "RG"], [amber2, "RA"], [red2, "RR"]]
    cycle = [s for s in cycle if s[0]]
    return {"loop": True, "cycle": cycle, **extra}


CASES = {
    # the second cycle (the first green's start is not seen): green 3 s < min_green 5 s
    "min_green": (two_phase(green1=3000),
                  {"1": "min_green", "2": 1, "3": 0, "4": 3000, "5": 5000, "6": 28000}),
    "short_amber": (two_phase(amber2=2000),
                    {"1": "amber", "2": 2, "3": 0, "4": 2000, "5": 3000, "6": 31000}),
    "no_amber": (two_phase(amber1=0),
                 {"1": "amber", "2": 1, "3": 0, "4": 0, "5": 3000, "6": 12000}),
    "short_all_red": (two_phase(red1=400),
                      {"1": "all_red", "2": 2, "3": 1, "4": 400, "5": 1000, "6": 15900}),
    "dark": (two_phase(overrides=[[5000, 2000, 2, "D"]]),
             {"1": "dark", "2": 2, "3": 0, "4": 0, "5": 0, "6": 5000}),
    "dual": (two_phase(overrides=[[5000, 2000, 1, "X"]]),
             {"1": "dual", "2": 1, "3": 0, "4": 0, "5": 0, "6": 5000}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_timing_and_lamp_checks(mpy, case):
    scen, want = CASES[case]
    out = run(mpy, scen, 60_000, config={"phases": 2}, step_ms=20)
    faults = records(out, 11)
    assert len(faults) == 1, faults
    assert faults[0][1] == 2
    assert faults[0][2] == {**want, "7": 100}


def test_a_glitch_shorter_than_the_debounce_is_ignored(mpy):
    scen = two_phase(overrides=[[5000, 60, 2, "G"], [8000, 90, 1, "D"]])
    out = run(mpy, scen, 20_000, config={"phases": 2}, step_ms=20)
    assert records(out, 11) == []
    assert [b["1"] for _, _, b in records(out, 10)][2:] == [1, 1, 2]   # only the real cycle
