"""Node config: defaults, validation messages that name key, value and what is allowed."""

from __future__ import annotations

import json

import pytest
from support.micropython import run, run_stdout

CODE = r"""
import json
from roadside_node.config import Config, ConfigError
c = Config.load()
out = %s
errors = []
for key, value in %s:
    try:
        out[key] = c.set(key, value)
    except ConfigError as e:
        errors.append(str(e))
out["errors"] = errors
print(json.dumps(out))
"""


def test_defaults_sets_and_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"node_id": "wl-0001", "role": "water", "extra": {"kept": 1},
         "sim": {"speed": 20}, "thresholds": {"alert_cm": 50}}))
    sets = [["report_interval_s", 30], ["alarm_cm", 120], ["report_interval_s", "soon"],
            ["sample_interval_s", 0], ["thresholds.alert_cm", 500], ["nope", 1],
            ["role", "pump"], ["fast_interval_s", 2.5]]
    got = ('{"alert": c.get("thresholds.alert_cm"), "journal": c.get("journal_max_bytes"), '
           '"report": c.get("report_interval_s"), "sim": c.sim, "extra": c.get("extra")}')
    out = json.loads(run_stdout(CODE % (got, json.dumps(sets)), cwd=tmp_path))
    assert out["alert"] == 50 and out["journal"] == 32768 and out["report"] == 60
    assert out["sim"] == {"speed": 20} and out["extra"] == {"kept": 1}
    assert out["report_interval_s"] == 30 and out["alarm_cm"] == 120
    e = out["errors"]
    assert e[0] == "report_interval_s: bad value 'soon'; allowed: an integer from 1 to 86400"
    assert e[1] == "sample_interval_s: bad value 0; allowed: an integer from 1 to 3600"
    assert e[2].startswith("thresholds: bad values alert_cm=500") and "alert_cm < alarm_cm" in e[2]
    assert e[3].startswith("nope: unknown key; allowed keys: node_id, role, board,")
    assert e[4] == "role: bad value 'pump'; allowed: water, signal, toll, rain"
    assert e[5].startswith("fast_interval_s: bad value 2.5; allowed: an integer")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["report_interval_s"] == 30 and saved["thresholds"] == {"alert_cm": 50,
                                                                        "alarm_cm": 120}
    assert saved["extra"] == {"kept": 1} and saved["sim"] == {"speed": 20}


@pytest.mark.parametrize("bad, message", [
    ({"journal_max_bytes": 10}, "journal_max_bytes: bad value 10; allowed: an integer from 1024"),
    ({"thresholds": {"hysteresis_cm": -1}}, "thresholds.hysteresis_cm: bad value -1"),
])
def test_bad_file_is_refused_at_boot_naming_the_key(tmp_path, bad, message):
    (tmp_path / "config.json").write_text(json.dumps(bad))
    proc = run("from roadside_node.config import Config\nConfig.load()", cwd=tmp_path,
               check=False)
    assert proc.returncode != 0 and message in proc.stdout.decode()


def test_the_key_tables_defaults_choices_and_rules(tmp_path):
    # each role's keys are one flat tuple (config.py TABLE): a float key's default is a
    # float, a choice's choices are named, the increasing rules hold, a value is no key
    (tmp_path / "config.json").write_text(json.dumps({"node_id": "wl-0001", "role": "water"}))
    sets = [["sensor.type", "radar"], ["sensor.type", "pressure_adc"],
            ["sensor.zero_raw", 60000], ["rain.hyst_mm_h", 60], ["ultrasonic_uart", 1]]
    got = ('{"alarm": c.get("thresholds.alarm_cm"), "tip": c.get("rain.tip_mm"), '
           '"full": c.effective()["thresholds"], "lookalike": c.get("ultrasonic_uart")}')
    out = json.loads(run_stdout(CODE % (got, json.dumps(sets)), cwd=tmp_path))
    # (the node's JSON writes a float as 150.0: json.loads gives a float)
    assert out["alarm"] == 150 and isinstance(out["alarm"], float) and out["tip"] == 0.2
    assert out["full"] == {"alert_cm": 100, "alarm_cm": 150, "critical_cm": 200,
                           "hysteresis_cm": 10}
    assert all(isinstance(v, float) for v in out["full"].values())
    assert out["lookalike"] is None and out["sensor.type"] == "pressure_adc"
    e = out["errors"]
    assert e[0] == ("sensor.type: bad value 'radar'; allowed: ultrasonic_uart, "
                    "ultrasonic_pulse, pressure_adc")
    assert e[1] == ("sensor: bad values zero_raw=60000 span_raw=59500; allowed: "
                    "zero_raw < span_raw")
    assert e[2] == "rain: bad values hyst_mm_h=60 heavy_mm_h=50; allowed: hyst_mm_h < heavy_mm_h"
    # the node's list of keys (config_edit.py, imported for the error) is the tools' list
    from roadside.tools.node import schema
    assert e[3] == "ultrasonic_uart: unknown key; allowed keys: " + ", ".join(
        schema.settable_keys())
    assert schema.settable_keys()[-2:] == ["conflicts", "antenna_lanes"]
    assert "thresholds.alarm_cm" in schema.settable_keys()
