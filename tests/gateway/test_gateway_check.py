"""`roadside gateway check`: every config error is one line naming the key, the bad value and
what is allowed; a good config prints a summary without any secret."""

from __future__ import annotations

import pytest
from roadside.tools.cli import main

BASE = '[gateway]\nid = "gw-1"\nsite = "s"\ndata_dir = "data"\n'


def check(tmp_path, capsys, text: str) -> tuple[int, str, str]:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(text)
    code = main(["gateway", "check", "--config", str(cfg)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("extra, key, value, allowed", [
    ('[log]\nformat = "yaml"\n', "log.format", "'yaml'", "'text', 'json'"),
    ('[log]\nlevel = "trace"\n', "log.level", "'trace'", "'debug', 'info', 'warning', 'error'"),
    ("[status]\nuplink_down_s = true\n", "status.uplink_down_s", "True", "0..86400"),
    ('[status]\nlisten = "localhost"\n', "status.listen", "'localhost'", "HOST:PORT"),
    ("[batch]\nmax_age_s = 7200\n", "batch.max_age_s", "7200", "0..3600"),
    ('[[link]]\ntype = "serial"\nport = "/dev/x"\nbaudrate = 100\n', "link[0].baudrate", "100",
     "115200"),
    ('[[link]]\ntype = "usb"\nport = "/dev/x"\n', "link[0].type", "'usb'", "'serial'"),
    ('[[uplink]]\ntype = "http"\nurl = "http://a/b"\n[[uplink]]\ntype = "http"\n'
     'url = "http://c/d"\nname = "http"\n', "uplink[1].name", "'http'", "unique"),
    ('[metrics]\nport = 1\n', "metrics", "unknown", "gateway, link, batch, uplink, status, log"),
    ('[log]\nformt = "json"\n', "log.formt", "unknown key", "format, level"),
])
def test_check_errors_name_key_value_allowed(tmp_path, capsys, extra, key, value, allowed):
    code, out, err = check(tmp_path, capsys, BASE + extra)
    assert code == 2 and out == ""
    line = err.strip()
    assert "\n" not in line
    _, _, message = line.partition(": error: ")
    assert message.split(": ", 1)[1].startswith(key + ":"), line
    assert value in line and allowed in line, line


def test_check_ok_prints_summary_without_secrets(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROADSIDE_TEST_TOKEN", "s3cret-token")
    (tmp_path / "mqtt.pass").write_text("s3cret-pass\n")
    code, out, err = check(tmp_path, capsys, BASE + (
        '[log]\nformat = "json"\nlevel = "debug"\n'
        '[[uplink]]\ntype = "http"\nurl = "https://city.example/batches"\n'
        'token_env = "ROADSIDE_TEST_TOKEN"\n'))
    assert code == 0 and err == "", err
    assert "OK" in out and "format=json" in out and "level=debug" in out
    assert "ROADSIDE_TEST_TOKEN" in out and "s3cret" not in out


def test_check_token_env_missing_names_the_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ROADSIDE_NOPE", raising=False)
    code, _, err = check(tmp_path, capsys, BASE + (
        '[[uplink]]\ntype = "http"\nurl = "https://x/b"\ntoken_env = "ROADSIDE_NOPE"\n'))
    assert code == 2 and "uplink[0].token_env" in err and "'ROADSIDE_NOPE'" in err


def test_the_example_in_docs_gateway_md_is_valid_and_complete(tmp_path, capsys):
    """docs/GATEWAY.md's gateway.toml loads (with its files made up) and shows every key."""
    import re
    from pathlib import Path

    from roadside.gateway import config as gc

    doc = (Path(__file__).parents[2] / "docs" / "GATEWAY.md").read_text()
    example = re.search(r"```toml\n(.*?)```", doc, re.S).group(1)
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("city-ca.pem", "gw.crt", "gw.key", "city.token", "broker.pass"):
        (etc / name).write_text("s3cr3t-content\n")
    (etc / "wl-0007.key").write_text("00" * 32 + "\n")   # the ble link's node secret
    (etc / "wl-0007.key").chmod(0o600)
    text = example.replace("/etc/roadside/", f"{etc}/").replace(
        '"/var/lib/roadside"', f'"{tmp_path / "data"}"')
    code, out, err = check(tmp_path, capsys, text)
    assert code == 0, err
    assert "s3cr3t-content" not in out and "00" * 32 not in out   # files named, never read out
    keys = set(re.findall(r"^#? ?(\w+) =", example, re.M))
    sections = set(re.findall(r"^\[\[?(\w+)\]\]?", example, re.M))
    assert sections == {"gateway", "link", "ble", "queue", "batch", "uplink", "status", "log",
                        "ota"}
    expected = (set(gc.UPLINK_KEYS) | set(gc.MQTT_KEYS) | set(gc.HTTP_KEYS)
                | {"id", "site", "data_dir", "port", "baudrate", "usb_serial", "vid_pid",
                   "max_records", "max_bytes", "max_age_s", "listen", "link_down_s",
                   "uplink_down_s", "format", "level", "node", "address", "secret_file",
                   "max_connections", "hold_s", "link_share", "retry_s", "stall_s",
                   "timeout_s", "trial_s"})
    assert expected <= keys, expected - keys


def test_check_shows_only_what_applies_and_warns_of_a_missing_port(tmp_path, capsys):
    missing = tmp_path / "ttyUSB9"
    code, out, err = check(tmp_path, capsys, BASE + (
        f'[[link]]\ntype = "serial"\nport = "{missing}"\n'
        '[[uplink]]\ntype = "http"\nurl = "https://city.example/batches"\n'))
    assert code == 0 and err == ""
    assert "None" not in out
    (http,) = [ln for ln in out.splitlines() if "type=http" in ln]
    for mqtt_key in ("topic", "keepalive_s", "protocol", "client_id", "command_allow"):
        assert f"{mqtt_key}=" not in http
    assert out.splitlines()[-1] == (
        f"warning: link[0].port: {missing} does not exist (yet): plug the adapter in, or give"
        " the port by USB identity (usb_serial, vid_pid); `roadside gateway ports` lists the"
        " serial ports")
    missing.write_text("")          # the port exists: no warning
    link = f'[[link]]\ntype = "serial"\nport = "{missing}"\n'
    code, out, _ = check(tmp_path, capsys, BASE + link)
    assert code == 0 and "warning" not in out


def test_check_json(tmp_path, capsys):
    import json

    from roadside.tools.cli import main as cli
    (tmp_path / "mqtt.pass").write_text("s3cret-pass\n")
    code, out, err = check(tmp_path, capsys, BASE + (
        f'[[link]]\ntype = "serial"\nport = "{tmp_path / "nope"}"\n'
        '[[uplink]]\ntype = "mqtt"\nurl = "mqtts://broker:8883"\nusername = "gw"\n'
        f'password_file = "{tmp_path / "mqtt.pass"}"\n'))
    assert code == 0 and out.startswith(f"{tmp_path / 'gateway.toml'}: OK")
    code = cli(["gateway", "check", "--json", "--config", str(tmp_path / "gateway.toml")])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["ok"] is True and "s3cret" not in json.dumps(doc)
    (up,) = doc["uplinks"]
    assert up["type"] == "mqtt" and up["password_file"] == str(tmp_path / "mqtt.pass")
    assert "gzip" not in up and "token_env" not in up and None not in up.values()
    assert doc["links"] == [{"type": "serial", "port": str(tmp_path / "nope"), "baudrate": 115200}]
    assert doc["batch"] == {"max_records": 200, "max_bytes": 65536, "max_age_s": 1.0}
    assert len(doc["warnings"]) == 1 and "does not exist" in doc["warnings"][0]
    (tmp_path / "gateway.toml").write_text(BASE + "[batch]\nmax_records = 0\n")
    code = cli(["gateway", "check", "--json", "--config", str(tmp_path / "gateway.toml")])
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert code == 2 and err == "" and doc["ok"] is False
    assert doc["error"].endswith("batch.max_records: must be an integer 1..10000, got 0")
