"""gateway/history.py: what the status page charts, bounded per node whatever a node sends."""

from __future__ import annotations

import json
import sys

from roadside.gateway import history as h
from roadside.gateway import protocol as p


def rec(seq: int, t: int, kind: int, body: dict, flags: int = 0) -> p.Record:
    return p.Record(seq, t, kind, flags, body)


def level(seq: int, t: int, cm: float) -> p.Record:
    return rec(seq, t, p.KIND_LEVEL, {1: cm, 2: 0.0, 3: 1000})


def test_levels_are_bounded_by_points_and_by_the_window():
    hist = h.History()
    # A level every second for two hours: more than MAX_POINTS and more than the window.
    hist.add("wl-1", "water", [level(i, 1_800_000_000 + i, i / 10) for i in range(1, 7201)],
             now=0.0)
    doc = hist.document()["nodes"][0]
    assert len(doc["levels"]) == h.MAX_POINTS
    assert doc["levels"][-1] == [1_800_007_200.0, 720.0]
    # Sparse: one level a minute for two hours keeps only the last hour (newest - WINDOW_S).
    hist.add("wl-2", "water", [level(i, 1_800_000_000 + 60 * i, 1.0) for i in range(1, 121)],
             now=0.0)
    levels = hist.nodes["wl-2"].document()["levels"]
    assert len(levels) == 61 and levels[-1][0] - levels[0][0] == h.WINDOW_S
    # The memory of one node stays small (the JSON of a full hour is a few tens of KiB).
    assert len(json.dumps(hist.nodes["wl-1"].document())) < 32 * 1024
    assert sys.getsizeof(hist.nodes["wl-1"].series) < 16 * 1024


def test_resent_records_are_not_counted_twice_and_bad_values_are_skipped():
    hist = h.History()
    batch = [level(1, 100, 10.0), level(2, 110, 11.0)]
    hist.add("wl-1", "water", batch, now=0.0)
    hist.add("wl-1", "water", batch, now=0.0)               # a go-back resend: duplicates
    hist.add("wl-1", "water", [level(3, 120, float("nan")),
                               rec(4, 130, p.KIND_LEVEL, {1: "high"})], now=0.0)
    assert hist.nodes["wl-1"].document()["levels"] == [[100.0, 10.0], [110.0, 11.0]]


def test_unsynced_records_take_the_gateway_clock():
    hist = h.History()
    hist.add("wl-1", "water", [rec(1, 42, p.KIND_LEVEL, {1: 10.0}, p.FLAG_CLOCK_UNSYNCED)],
             now=1_800_000_000.5)
    assert hist.nodes["wl-1"].document()["levels"] == [[1_800_000_000.5, 10.0]]


def test_toll_transactions_per_minute_with_quiet_minutes_and_at_most_an_hour():
    hist = h.History()
    t0 = 1_800_000_000 // 60 * 60
    recs = [rec(i + 1, t, p.KIND_TRANSACTION, {1: "e2", 2: 1}, p.FLAG_PRIORITY)
            for i, t in enumerate([t0, t0 + 5, t0 + 59, t0 + 180])]
    hist.add("tb-1", "toll", recs, now=0.0)
    assert hist.nodes["tb-1"].document()["per_minute"] == [
        [t0, 3], [t0 + 60, 0], [t0 + 120, 0], [t0 + 180, 1]]
    # Two hours later: only the last hour of minutes is kept and shown.
    hist.add("tb-1", "toll", [rec(10, t0 + 7200, p.KIND_TRANSACTION, {1: "e2"})], now=0.0)
    per_minute = hist.nodes["tb-1"].document()["per_minute"]
    assert len(per_minute) == h.TOLL_MINUTES and per_minute[-1] == [t0 + 7200, 1]
    assert sum(m[1] for m in per_minute) == 1 and len(hist.nodes["tb-1"].minutes) == 1


def test_signal_phases_restart_with_the_monitors_clock_and_faults_are_kept():
    hist = h.History()
    phase = [rec(i, 100 + i, p.KIND_PHASE, {1: 1, 2: "green", 5: at})
             for i, at in ((1, 5000), (2, 9000), (3, 500))]       # seq 3: after a reboot
    hist.add("sg-1", "signal", [*phase, rec(4, 104, p.KIND_FAULT, {1: "dark", 2: 2, 6: 600},
                                            p.FLAG_PRIORITY)], now=0.0)
    doc = hist.nodes["sg-1"].document()
    assert doc["phases"] == [[500, 1, "green"]]
    assert doc["faults"] == [{"t": 104.0, "fault": "dark", "phase": 2, "at_ms": 600}]


def test_thresholds_default_then_learned_from_config_replies():
    hist = h.History()
    hist.add("wl-1", "water", [level(1, 100, 10.0)], now=0.0)
    hist.add("rg-1", "rain", [rec(1, 100, p.KIND_RAINFALL, {1: 1, 2: 0.2, 3: 60, 4: 12.0})],
             now=0.0)
    water = hist.nodes["wl-1"].document()
    assert water["thresholds"]["alarm_cm"] == 150.0
    assert water["thresholds_from"] == h.DEFAULT_SOURCE
    # config.get of the whole config (nested sections, as the firmware answers it)
    assert hist.learn_config("wl-1", "water", "config.get", None, {
        "thresholds": {"alert_cm": 30, "alarm_cm": 40.5, "critical_cm": 55,
                       "hysteresis_cm": 2}, "rain": {"heavy_mm_h": 1}}, "t1")
    water = hist.nodes["wl-1"].document()
    assert water["thresholds"] == {"alert_cm": 30.0, "alarm_cm": 40.5, "critical_cm": 55.0,
                                   "hysteresis_cm": 2.0}
    assert water["thresholds_from"] == "node config (config.get, t1)"
    # config.set with the firmware's alias, and config.get of one key
    assert hist.learn_config("wl-1", "water", "config.set",
                             {"key": "critical_cm", "value": 70}, 70, "t2")
    assert hist.learn_config("rg-1", "rain", "config.get", {"key": "rain.heavy_mm_h"}, 30,
                             "t3")
    assert hist.nodes["wl-1"].thresholds["critical_cm"] == 70.0
    assert hist.nodes["rg-1"].document()["thresholds"] == {"heavy_mm_h": 30.0,
                                                           "hyst_mm_h": 10.0}
    # Not thresholds: nothing learned, nothing changed
    assert not hist.learn_config("wl-1", "water", "config.set",
                                 {"key": "report_interval_s", "value": 5}, 5, "t4")
    assert not hist.learn_config("wl-1", "water", "info", None, {"alarm_cm": 1}, "t4")
    assert not hist.learn_config("sg-1", "signal", "config.get", None, {}, "t4")
    assert hist.nodes["wl-1"].thresholds_from == "node config (config.set, t2)"
