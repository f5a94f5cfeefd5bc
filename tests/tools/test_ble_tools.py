"""The installer's BLE tools against real MicroPython nodes on virtual radios: `roadside scan`
(ids, roles, status, RSSI; text and JSON) and BleSerial, which lets the serial tools' NodeLink
(`roadside config` / `monitor`) talk to a node over an authenticated BLE session; secret.set
is refused over BLE. The command line itself (`roadside config|monitor|scan --ble`, through
cli.main) runs on the same virtual radio through ble_transport.default_radio."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from roadside.tools import cli
from roadside.tools.commands import scan
from roadside.tools.node import ble_transport
from roadside.tools.node.link import CommandFailed, NodeLink
from support.ble_rig import BleRig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[BleRig, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    r = BleRig(tmp_path, nodes=2, speed=5.0)

    def call(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)
    try:
        call(r.start())
        yield r, loop
    finally:
        call(r.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_scan_lists_nodes(rig: tuple[BleRig, asyncio.AbstractEventLoop]) -> None:
    r, loop = rig
    assert r.backend is not None
    backend = (r.backend.scanner, r.backend.client)
    nodes = asyncio.run_coroutine_threadsafe(
        ble_transport.scan(1.5, backend=backend, site="bd-test"), loop).result(20)
    assert [a.node for a in sorted(nodes, key=lambda a: a.node)] == ["wl-0001", "wl-0002"]
    lines: list[str] = []
    scan.render(nodes, False, lines.append)
    assert all("water" in x and "dBm" in x and "battery 80%" in x for x in lines), lines
    out: list[str] = []
    scan.render(nodes, True, out.append)
    doc = json.loads(out[0])
    assert {d["node"] for d in doc} == {"wl-0001", "wl-0002"}
    assert all(d["rssi"] < 0 and d["provisioned"] and not d["alarm"] for d in doc)
    other = asyncio.run_coroutine_threadsafe(
        ble_transport.scan(1.0, backend=backend, site="elsewhere"), loop).result(20)
    assert other == []


def test_config_over_ble(rig: tuple[BleRig, asyncio.AbstractEventLoop], tmp_path: Path) -> None:
    r, loop = rig
    assert r.backend is not None
    files = r.write_secrets()
    ser = ble_transport.BleSerial.open("wl-0002", files[1], loop=loop,
                                       backend=(r.backend.scanner, r.backend.client))
    with NodeLink("ble:wl-0002", ser=ser) as link:
        info = link.command("info")
        assert info["node"] == "wl-0002" and info["ble"]["auth_ok"] == 1
        assert link.command("config.set", {"key": "report_interval_s", "value": 30}) == 30
        assert link.command("config.get", {"key": "report_interval_s"}) == 30
        with pytest.raises(CommandFailed, match="refused over BLE"):
            link.command("secret.set", {"secret": "00" * 32})
    cfg = r.nodes[1].flash.get_json("config.json")
    assert cfg["report_interval_s"] == 30
    wrong = tmp_path / "wrong.key"
    wrong.write_text("11" * 32)
    with pytest.raises(ble_transport.BleError, match="authentication with wl-0001 failed"):
        ble_transport.BleSerial.open("wl-0001", wrong, loop=loop,
                                     backend=(r.backend.scanner, r.backend.client))


@pytest.fixture
def radio(rig: tuple[BleRig, asyncio.AbstractEventLoop], tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[BleRig]:
    """The command line on the rig's virtual radio; default key files in tmp/secrets."""
    r, loop = rig
    assert r.backend is not None
    r.write_secrets()   # tmp/secrets/NODE.key: the default location, as on a laptop
    monkeypatch.setattr(ble_transport, "default_radio",
                        ((r.backend.scanner, r.backend.client), loop))
    monkeypatch.setattr(ble_transport, "SECRETS_DIR", tmp_path / "secrets")
    yield r


def test_config_cli_over_ble(radio: BleRig, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["config", "set", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "([-p] PORT | --ble NODE [--secret-file FILE])" in text
    assert "roadside config get --ble wl-0042" in text
    # the default key file (tmp/secrets/wl-0002.key); KEY after --ble NODE
    assert cli.main(["config", "get", "--ble", "wl-0002", "report_interval_s"]) == 0
    assert capsys.readouterr().out.strip() == "60"
    key = str(tmp_path / "secrets" / "wl-0002.key")
    assert cli.main(["config", "set", "--ble", "wl-0002", "--secret-file", key,
                     "report_interval_s=30", "alarm_cm=170", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["port"] == "ble:wl-0002"
    assert doc["changed"]["thresholds.alarm_cm"] == {"old": 150.0, "new": 170.0}
    settings = tmp_path / "site.toml"
    settings.write_text("[thresholds]\nalarm_cm = 180\n")
    assert cli.main(["config", "apply", "--ble", "wl-0002", str(settings), "--yes"]) == 0
    out = capsys.readouterr()
    assert "ble:wl-0002: 1 change(s)" in out.err and "170.0 -> 180.0" in out.err
    cfg = radio.nodes[1].flash.get_json("config.json")
    assert cfg["report_interval_s"] == 30 and cfg["thresholds"]["alarm_cm"] == 180.0


def test_cli_ble_errors(radio: BleRig, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    def error(argv: list[str]) -> str:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        *progress, line = err.splitlines()       # the error is one line, the last
        assert all(x.startswith("looking for") for x in progress), err
        return line

    key = str(tmp_path / "secrets" / "wl-0001.key")
    err = error(["config", "get", "--ble", "wl-0009", "--secret-file", key,
                 "--ble-timeout", "1"])
    assert err.startswith("roadside config: error: node wl-0009 not heard within 1 s: move"
                          " closer to it and check that it is powered"), err
    wrong = tmp_path / "wrong.key"
    wrong.write_text("11" * 32)
    wrong.chmod(0o600)                     # else the tools warn (readable by others)
    err = error(["monitor", "--ble", "wl-0001", "--secret-file", str(wrong), "--count", "1"])
    assert (f"authentication with wl-0001 failed: the node does not know this secret; check"
            f" that the key file {wrong} (fingerprint ") in err, err
    err = error(["config", "get", "--ble", "wl-0001", "--secret-file", str(tmp_path / "no")])
    assert f"no key file {tmp_path / 'no'}: pass --secret-file FILE" in err, err
    err = error(["config", "get", "/dev/ttyUSB9", "node_id", "--ble", "wl-0001"])
    assert "give PORT (/dev/ttyUSB9) or --ble wl-0001, not both" in err
    err = error(["config", "get"])
    assert "give the node's data PORT (or -p PORT), or --ble NODE" in err


def test_monitor_and_scan_cli_over_ble(radio: BleRig,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["monitor", "--ble", "wl-0001", "--session", "--duration", "4",
                     "--json"]) == 0
    events = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert events[0]["type"] == "HELLO" and events[0]["node"] == "wl-0001"
    records = [e for e in events if e["type"] == "RECORDS"]
    assert records and all(e["node"] == "wl-0001" for e in records)
    assert {e["kind"] for e in records} & {"level", "health"}
    assert events[-1]["type"] == "SUMMARY" and events[-1]["crc"] == 0
    assert cli.main(["monitor", "--ble", "wl-0001", "--count", "1"]) == 0
    out = capsys.readouterr()
    assert "HELLO    wl-0001 water fw " in out.out
    assert "monitoring ble:wl-0001 (read-only" in out.err
    assert cli.main(["scan", "--timeout", "1.5", "--site", "bd-test"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(x.split()[0] for x in lines) == ["wl-0001", "wl-0002"]
