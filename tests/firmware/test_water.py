"""The water role: median filter, outlier rejection, thresholds with hysteresis, intervals."""

from __future__ import annotations

import json
from itertools import pairwise

from support.micropython import run_stdout

CODE = r"""
import json
from roadside_node.config import Config
from roadside_node.roles.water import WaterRole
cfg = Config({"datum_mm": 3000, "report_interval_s": 60, "fast_interval_s": 10,
              "sample_interval_s": 2, "thresholds": {"alert_cm": 100, "alarm_cm": 150,
              "critical_cm": 200, "hysteresis_cm": 10}})
out = []
role = WaterRole(cfg, lambda kind, flags, body: out.append([kind, flags, body]) or len(out))
t = 0
for level in %s:
    for i in range(5):
        role.feed(t, 3000 - int(level * 10))
        t += 2
print(json.dumps(out))
"""


def run(levels: list) -> list:
    return json.loads(run_stdout(CODE % json.dumps(levels)))


def test_state_changes_follow_thresholds_with_hysteresis():
    levels = [50, 105, 95, 89, 155, 145, 205, 191, 185, 120, 50]
    alarms = [(b["1"], b["3"], f) for k, f, b in run(levels) if k == 2]
    assert alarms == [("alert", "normal", 2), ("normal", "alert", 2), ("alarm", "normal", 2),
                      ("critical", "alarm", 2), ("alarm", "critical", 2),
                      ("alert", "alarm", 2), ("normal", "alert", 2)]


def test_hovering_inside_the_hysteresis_band_raises_one_alarm():
    alarms = [b["1"] for k, f, b in run([99, 101, 95, 102, 92, 100.5, 91]) if k == 2]
    assert alarms == ["alert"]


def test_a_single_outlier_is_rejected():
    out = run([40, 40])
    assert all(k == 1 for k, _, _ in out)
    code = CODE.replace("role.feed(t, 3000 - int(level * 10))",
                        "role.feed(t, 500 if (t == 12) else 3000 - int(level * 10))")
    records = json.loads(run_stdout(code % "[40, 40, 40]"))
    assert [k for k, _, _ in records] == [1]            # no alarm from one bad echo
    assert records[0][2] == {"1": 40.0, "2": 0.0, "3": 2600}


def test_level_records_calm_every_report_interval_fast_when_alert():
    out = run([20] * 12 + [120] * 6)   # 12 x 10 s calm, then 60 s above alert
    level_t = [i for i, (k, _, _) in enumerate(out) if k == 1]
    calm = [r for r in out[:3] if r[0] == 1]
    assert len(calm) == 2                                 # t=0 and t=60 within 120 s
    assert sum(1 for k, _, _ in out[3:] if k == 1) >= 5   # every 10 s above alert
    assert level_t


ROLE = r"""
import json
from roadside_node.config import Config
from roadside_node.roles.water import WaterRole
cfg = Config(%s)
out = []
role = WaterRole(cfg, lambda kind, flags, body: out.append([kind, flags, body]) or len(out))
"""


def run_role(cfg: dict, code: str) -> list:
    return json.loads(run_stdout(ROLE % json.dumps(cfg) + code))


def test_pressure_sensor_raw_to_level_with_zero_span_and_datum_offset():
    # 4-20 mA over 0..5 m: raw 12000 at 0 mm, 60000 at 5000 mm; the sensor sits 300 mm
    # below the datum, so level = depth - 300 mm
    cfg = {"sensor": {"type": "pressure_adc", "zero_raw": 12000, "span_raw": 60000,
                      "span_mm": 5000, "offset_mm": -300}, "calm_interval_s": 10}
    out = run_role(cfg, """
raws = [12000] + [21600] * 5 + [60000] + [23520] * 3 + [26400] * 3
for i, raw in enumerate(raws):      # raw = 12000 + 9.6 * depth_mm
    role.feed(i * 10, raw)
print(json.dumps([[k, b] for k, f, b in out]))
""")
    levels = [b["1"] for k, b in out if k == 1]
    depths = [b["3"] for k, b in out if k == 1]
    assert levels[:2] == [-30.0, 70.0] and depths[:2] == [0, 1000]   # (1000 - 300) / 10
    assert max(levels) == 120.0 and 90.0 in levels        # depth 1500 -> 120 cm
    states = [b["1"] for k, b in out if k == 2]
    assert states == ["alert"]                            # the lone 60000 spike was rejected


def test_report_intervals_fast_when_rising_normal_when_falling_calm_when_steady():
    cfg = {"calm_interval_s": 300, "report_interval_s": 60, "fast_interval_s": 10,
           "rise_cm_per_min": 5, "calm_cm_per_min": 1, "outlier_mm": 10000}
    out = run_role(cfg, """
t = 0
times = []
def run(levels):
    global t
    for lv in levels:
        n = len(out)
        role.feed(t, 3000 - int(lv * 10))
        if len(out) > n and out[-1][0] == 1:
            times.append(t)
        t += 10
run([20] * 70)                         # steady 700 s: calm, every 300 s
run([20 + 2 * i for i in range(20)])   # +12 cm/min: rising, every 10 s
run([58 - 0.5 * i for i in range(40)]) # -3 cm/min: falling, every 60 s
print(json.dumps(times))
""")
    calm = [t for t in out if t < 700]
    rising = [t for t in out if 800 <= t < 900]
    falling = [t for t in out if 960 <= t]
    assert calm == [0, 300, 600]
    assert len(rising) == 10 and all(b - a == 10 for a, b in pairwise(rising))
    assert len(falling) >= 3 and all(b - a == 60 for a, b in pairwise(falling))


def test_state_survives_save_and_restore_through_json():
    cfg = {"calm_interval_s": 60}
    out = run_role(cfg, """
for i, lv in enumerate([100, 160, 160, 160]):
    role.feed(i * 2, 3000 - lv * 10)
saved = json.dumps(role.save())
role2 = WaterRole(cfg, lambda kind, flags, body: out.append([kind, flags, body]) or len(out))
role2.restore(json.loads(saved))
n = len(out)
role2.feed(8, 3000 - 1560)      # 156 cm: inside alarm's hysteresis band, stays alarm
for t in (10, 12, 14):
    role2.feed(t, 3000 - 1380)  # 138 cm: below 140, back to alert (once the median follows)
print(json.dumps([saved, [b for k, f, b in out[n:] if k == 2], role2.samples]))
""")
    saved, alarms, samples = out
    assert json.loads(saved)["st"] == 2
    assert alarms == [{"1": "alert", "2": 138.0, "3": "alarm"}]
    assert json.loads(saved)["s"] == [2000, 1400, 1400, 1400]
    assert samples == [1400, 1440, 1620, 1620, 1620]
