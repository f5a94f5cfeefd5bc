"""roadside config get|set|apply and roadside monitor against a running simulated node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from roadside.gateway import ble_auth
from roadside.tools import cli
from roadside.tools.node import ble_transport
from roadside.tools.sim.launcher import Simulation
from support.install_support import running_simulation


@pytest.fixture(scope="module")
def water_sim(tmp_path_factory) -> Simulation:
    sim = Simulation.water(tmp_path_factory.mktemp("cfg"), 1, speed=20)
    with running_simulation(sim):
        yield sim


@pytest.fixture(scope="module")
def node_port(water_sim: Simulation) -> str:
    return water_sim.gateway_ports()["wl-0001"]


def test_get_set_apply(node_port: str, capsys, tmp_path: Path):
    assert cli.main(["config", "get", node_port, "thresholds.alarm_cm"]) == 0
    assert capsys.readouterr().out.strip() == "150.0"
    assert cli.main(["config", "set", node_port, "alarm_cm=170", "critical_cm=260",
                     "--json"]) == 0
    changed = json.loads(capsys.readouterr().out)["changed"]
    assert changed["thresholds.alarm_cm"] == {"old": 150.0, "new": 170.0}
    settings = tmp_path / "site.toml"
    settings.write_text("report_interval_s = 30\n[thresholds]\nalarm_cm = 400\n"
                        "critical_cm = 500\n")
    assert cli.main(["config", "apply", node_port, str(settings), "--yes"]) == 0
    out = capsys.readouterr()
    assert "thresholds.alarm_cm     170.0 -> 400.0" in out.err  # the diff, shown first
    assert cli.main(["config", "get", node_port, "--json"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["report_interval_s"] == 30 and cfg["thresholds"]["critical_cm"] == 500.0
    assert cli.main(["config", "apply", node_port, str(settings), "--yes"]) == 0
    assert "nothing to change" in capsys.readouterr().out


def test_bad_values_refused_before_sending(node_port: str, capsys):
    # a port that does not exist: refused by the schema before the port is opened
    assert cli.main(["config", "set", "/dev/nonexistent", "alarm_cm=abc"]) == 2
    assert ("thresholds.alarm_cm: bad value 'abc'; allowed: a number from -1000 to 10000"
            in capsys.readouterr().err)
    # cross-key rule checked on the whole config before sending
    assert cli.main(["config", "set", node_port, "alert_cm=9000"]) == 2
    assert "alert_cm < alarm_cm < critical_cm" in capsys.readouterr().err


def test_monitor(node_port: str, capsys):
    assert cli.main(["monitor", "--port", node_port, "--duration", "3.5", "--session"]) == 0
    out = capsys.readouterr().out
    assert "HELLO    wl-0001 water" in out and "RECORD" in out and " level " in out
    assert cli.main(["monitor", "--port", node_port, "--duration", "3.5", "--json",
                     "--raw"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    # the session is up since the TIME above: the node resends its unacked records
    assert any(e["type"] in ("HELLO", "RECORDS") for e in lines)
    assert any(e["type"] == "BYTES" for e in lines)
    assert lines[-1]["type"] == "SUMMARY"


def test_completion(capsys):
    assert cli.main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "complete -o bashdefault -F _shtab_roadside roadside" in script
    for word in ("deploy", "monitor", "--link-port", "apply", "roadside-water-level-r1"):
        assert word in script


def test_secret_provisioned_over_serial(water_sim: Simulation, node_port: str, capsys,
                                        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ble_transport, "SECRETS_DIR", tmp_path / "secrets")
    key = tmp_path / "secrets" / "wl-0001.key"
    flash = water_sim.nodes[0].flash   # the secret lives in the node's flash image

    def on_node() -> bytes:
        return flash.get("secret.bin")

    assert cli.main(["config", "secret", node_port]) == 0        # a new key, made here
    secret = bytes.fromhex(key.read_text())
    fp = ble_auth.fingerprint(secret)
    assert f"wl-0001: secret set (fingerprint {fp}); key file {key} (new)" in \
        capsys.readouterr().out
    assert key.stat().st_mode & 0o777 == 0o600 and on_node() == secret
    assert cli.main(["config", "secret", node_port, "--json", "--resend"]) == 0  # the key again
    doc = json.loads(capsys.readouterr().out)
    assert doc["new"] is False and doc["fingerprint"] == fp and on_node() == secret
    assert cli.main(["config", "secret", node_port, "--new"]) == 0    # rotation
    capsys.readouterr()
    rotated = bytes.fromhex(key.read_text())
    assert rotated != secret and on_node() == rotated
    assert "secret" not in json.dumps(_config(node_port, capsys))     # never in config.get
    assert cli.main(["config", "secret", "--ble", "wl-0001"]) == 2
    err = capsys.readouterr().err
    assert "over the serial cable only" in err and len(err.strip().splitlines()) == 1


def _config(port: str, capsys) -> dict:
    assert cli.main(["config", "get", port, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_ota_key_made_and_provisioned_over_serial(water_sim: Simulation, node_port: str,
                                                  capsys, tmp_path: Path) -> None:
    key = tmp_path / "ota" / "ota.key"
    assert cli.main(["ota", "key", "--key-file", str(key)]) == 0
    assert key.stat().st_mode & 0o777 == 0o600
    assert cli.main(["ota", "key", "--key-file", str(key)]) == 2          # never overwritten
    assert "pass --new" in capsys.readouterr().err
    raw = bytes.fromhex(key.read_text())
    assert cli.main(["config", "ota-key", node_port, "--key-file", str(key), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["fingerprint"] == ble_auth.fingerprint(raw)
    assert water_sim.nodes[0].flash.get("ota.key") == raw                 # on the node's flash
    assert cli.main(["config", "ota-key", node_port, "--key-file",
                     str(tmp_path / "none.key")]) == 2
    err = capsys.readouterr().err
    assert "no ota key file" in err and len(err.strip().splitlines()) == 1
