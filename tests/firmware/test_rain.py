"""The rain gauge under MicroPython: the storm scenario's tips (hw/sim_rain.py) into
roles/rain.py at the small heap, with exact rainfall records per interval, the intensity alarm
raised as soon as an interval is heavy and cleared with hysteresis; and a whole battery node
(sim_main.py over a pty) across deep sleep, woken by the bucket's pin, that loses and doubles
no tip and keeps its alarm state."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
from support.mpy import build, run_driver
from test_session import Gateway

STORM = Path(__file__).resolve().parents[2] / "scenarios" / "rain" / "storm.json"
K_RAINFALL, K_INTENSITY, F_PRIORITY = 30, 31, 2

DRIVER = r"""
import json
from roadside_node.config import Config
from roadside_node.roles.rain import RainRole
from roadside_node.hw.sim_rain import IO
with open("args.json") as f:
    ARGS = json.load(f)


class HW:  # the little of hw/sim.py that hw/sim_rain.py uses
    now = 0.0

    def scenario(self):
        return ARGS["scenario"]

    def sim_s(self):
        return self.now

    def boot_s(self):
        return 0.0

    def woke_by_pin(self):
        return False

    def wake_pin(self, pin, level=0):
        self.pin = pin


def emit(kind, flags, body):
    print(json.dumps([hw.now, kind, flags, body]))
    return 1


hw = HW()
cfg = Config(ARGS["config"])
io = IO(hw, cfg)
role = RainRole(cfg, emit, io)
for t in range(0, ARGS["end_s"] + 1):
    hw.now = float(t)
    role.step(hw.now)
print(json.dumps(["next_at", io.next_at(0.0), io.next_at(400.0)]))
import gc
gc.collect()
print(json.dumps(["free", gc.mem_free()]))
"""


@pytest.fixture(scope="module")
def mpy(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("mpy"))


def storm_mm(t: float, scen: dict) -> float:
    """The storm's rain (mm) from 0 to t: the reference for the simulated bucket."""
    pts, lap = scen["points"], scen["loop_s"]
    laps, t = divmod(t, lap)

    def upto(x: float) -> float:
        total = 0.0
        for i, (t0, rate) in enumerate(pts):
            if x <= t0:
                break
            t1 = pts[i + 1][0] if i + 1 < len(pts) else x
            total += rate * (min(x, t1) - t0) / 3600
        return total

    return laps * upto(lap) + upto(t)


def test_storm_rainfall_per_interval_and_intensity_alarm_with_hysteresis(mpy):
    scen = json.loads(STORM.read_text())
    args = {"scenario": scen, "config": {"role": "rain"}, "end_s": 600}
    out = [json.loads(x) for x in run_driver(
        DRIVER, mpy, Path(tempfile.mkdtemp(dir=mpy.parent)), args).splitlines()]
    rain = [(t, b) for t, k, f, b in (r for r in out if r[0] not in ("next_at", "free"))
            if k == K_RAINFALL]
    # one record a minute (rain.interval_s 60), tips as the storm's integral says, 0.2 mm each
    assert [t for t, _ in rain] == [60.0 * i for i in range(1, 11)]
    total = 0
    for t, b in rain:
        total += b["1"]
        assert b["5"] == total == int(storm_mm(t, scen) / 0.2 + 1e-9)
        assert b["2"] == pytest.approx(b["1"] * 0.2) and b["3"] == 60
        assert b["4"] == pytest.approx(b["2"] * 60, abs=0.05)
    # 80-140 s at 120 mm/h: the alarm as soon as the interval holds 5 tips (60 mm/h over the
    # minute), not at its end; 40 mm/h (140-200 s) is within the hysteresis; 5 mm/h clears
    alarms = [(t, f, b) for t, k, f, b in (r for r in out if r[0] not in ("next_at", "free"))
              if k == K_INTENSITY]
    assert [(b["1"], b["3"]) for _, _, b in alarms] == [("heavy", "normal"), ("normal", "heavy"),
                                                       ("heavy", "normal"), ("normal", "heavy")]
    assert all(f == F_PRIORITY for _, f, _ in alarms)
    first = alarms[0]
    assert 60 < first[0] < 120 and first[2]["2"] >= 50
    cleared = alarms[1]
    assert cleared[0] in (240.0, 300.0) and cleared[2]["2"] < 40
    # the wake pin's next edge: when the storm's rain reaches the next 0.2 mm
    nxt = [r for r in out if r[0] == "next_at"][0]
    assert storm_mm(nxt[1], scen) == pytest.approx(0.2, abs=1e-4)
    assert storm_mm(nxt[2], scen) == pytest.approx(
        (int(storm_mm(400, scen) / 0.2 + 1e-9) + 1) * 0.2, abs=1e-4)
    assert out[-1][0] == "free" and out[-1][1] > 4096


def test_battery_rain_gauge_counts_every_tip_across_deep_sleep(tmp_path):
    """180 mm/h from the start: a tip every 4 s of role time. The node deep-sleeps between
    intervals (rain.interval_s 20), each tip wakes it (the pin), and the counts live in RTC
    memory; the gateway side checks the records: every tip once, the alarm raised once."""
    scen = tmp_path / "steady.json"
    scen.write_text(json.dumps({"points": [[0, 180]]}))
    g = Gateway(tmp_path / "node", node_id="rg-0042", role="rain", battery=True,
                rain={"interval_s": 20}, health_interval_s=3600, awake_max_ms=1500)
    g.set_sim(speed=10, seed=1, scenario=str(scen))
    stored: dict[int, list] = {}
    starts = 1

    def contiguous() -> int:
        n = 0
        while n + 1 in stored:
            n += 1
        return n

    def rainfall() -> list:
        return [r[4] for _, r in sorted(stored.items()) if r[2] == K_RAINFALL]

    try:
        g.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(rainfall()) < 4:
            if g.proc.poll() is not None:
                assert g.proc.returncode == 3, g.log.read_text()[-2000:]
                g.start()
                starts += 1
                continue
            try:
                m = g.recv(timeout=0.1)
            except AssertionError:
                continue
            if m[0] == 1:
                g.send({0: 6, 1: 1795420800000 + int(time.monotonic() * 1000)})
                g.send({0: 3, 1: contiguous()})
            elif m[0] == 2:
                for r in m[2]:
                    stored[r[0]] = r
                g.send({0: 3, 1: contiguous()})
    finally:
        g.kill()
        log = g.log.read_text()
    rain = rainfall()
    assert len(rain) >= 4, log[-3000:]
    # woken by tips as well as by the interval's timer: more boots than intervals
    assert starts > len(rain) + 2, log[-3000:]
    total = 0
    for body in rain:
        total += body[1]
        assert body[5] == total                     # no tip lost or counted twice by a wake
        assert 4 <= body[1] <= 7, rain              # 5 tips in 20 s, give or take the edges
    # four intervals end at 80 s of role time and a little after (each wake's boot time)
    assert 20 <= total <= 26, rain
    alarms = [r[4] for _, r in sorted(stored.items()) if r[2] == K_INTENSITY]
    assert [a[1] for a in alarms] == ["heavy"]      # raised once: the state survived sleep
    assert sorted(stored) == list(range(1, len(stored) + 1))
