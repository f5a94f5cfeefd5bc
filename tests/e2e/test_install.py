"""The installer's chain end to end, with the real command line and nothing mocked but the
hardware: `roadside flash` writes MicroPython onto a virtual ESP32 ROM bootloader (esp32-mock-
bootloader on a loopback port), `roadside deploy` puts the node firmware on a virtual
MicroPython board with the same MAC (the unix port on a LittleFS image, raw REPL on a pty),
`roadside config set` changes the running node's thresholds over its data link, then the
gateway daemon takes that link and the node's records reach the reference receiver.

Bounded (TEST_TIMEOUT_S for the whole chain, a deadline per wait), loopback and free ports
only, and every process (virtual ROM, board interpreter, gateway, receiver) stopped after.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from roadside.tools import cli, procs, virtual_rom
from roadside.tools.gateway_config import GatewaySettings, write
from support.install_support import virtual_board

pytest.importorskip("esp32_mock_bootloader")

BOARD = "roadside-water-level-r1"
MAC = "24:0a:c4:5e:00:17"
NODE = "wl-5e0017"  # role prefix + the MAC's last three bytes, at flash and at deploy
TEST_TIMEOUT_S = 45.0
# the virtual board's sensor is 2500 mm above the water; datum 3000 mm: level 50.0 cm
LEVEL_CM = 50.0


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, f"roadside {' '.join(argv[:2])} exited {code}: {err}"
    return json.loads(out)


def left(deadline: float) -> float:
    rest = deadline - time.monotonic()
    assert rest > 0, f"the install chain took longer than {TEST_TIMEOUT_S:g} s"
    return rest


def records(db: Path) -> list[tuple[str, int, str, dict]]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT node, seq, kind, data FROM records ORDER BY arrival")
        return [(n, s, k, json.loads(d)) for n, s, k, d in rows.fetchall()]
    except sqlite3.OperationalError:  # the receiver has not made its tables yet
        return []
    finally:
        con.close()


def test_flash_deploy_configure_report(tmp_path: Path, capsys, start_receiver) -> None:
    t0 = time.monotonic()
    deadline = t0 + TEST_TIMEOUT_S
    laps: dict[str, float] = {}

    def lap(name: str) -> None:
        laps[name] = round(time.monotonic() - t0 - sum(laps.values()), 2)

    # 1. flash MicroPython onto the board in its ROM bootloader
    image = virtual_rom.build_test_image("esp32", tmp_path / "ESP32_GENERIC.bin", 64 * 1024)
    rom = virtual_rom.start("esp32", MAC, lifetime=30, state_dir=tmp_path / "rom")
    try:
        flashed = run(capsys, "flash", "--board", BOARD, "--port", rom.url,
                      "--image", str(image), "--json")
    finally:
        rom.stop()
    assert flashed["result"] == "ok" and flashed["verified"] is True
    assert flashed["mac"] == MAC and flashed["node_id"] == NODE
    lap("flash")

    # 2. the same board, now running MicroPython: deploy the node firmware and its config
    with virtual_board(tmp_path / "board", mac=MAC) as board:
        deployed = run(capsys, "deploy", "--board", BOARD, "--role", "water",
                       "--port", board.port, "--link-port", board.link_port, "--json")
        assert deployed["files"] == len(deployed["copied"]) > 10  # a blank board: all of it
        hello = deployed["hello"]
        assert (hello["node"], hello["role"], hello["board"]) == (NODE, "water", BOARD)
        left(deadline)
        lap("deploy")
        said_hello_at = board.log.stat().st_size  # console.log: what the node printed since

        # 3. on site: thresholds below the water, over the running node's data link
        changed = run(capsys, "config", "set", board.link_port, "alert_cm=20", "alarm_cm=30",
                      "critical_cm=100", "--json")["changed"]
        assert changed["thresholds.alarm_cm"] == {"old": 150.0, "new": 30.0}
        cfg = run(capsys, "config", "get", board.link_port, "--json")
        assert cfg["node_id"] == NODE
        assert cfg["thresholds"] == {**cfg["thresholds"], "alert_cm": 20.0, "alarm_cm": 30.0,
                                     "critical_cm": 100.0}
        left(deadline)
        lap("config")

        # 4. the gateway takes the link; the node's records reach the receiver
        receiver = start_receiver()
        gw_cfg = write(tmp_path / "gateway.toml", [board.link_port], tmp_path / "gw-data",
                       receiver.batches_url, "127.0.0.1:0",
                       GatewaySettings(max_records=20, max_age_s=0.2))
        proc, _status = procs.start_gateway(gw_cfg, tmp_path / "gateway.log",
                                            timeout=min(20.0, left(deadline)))
        try:
            got: list = []
            while time.monotonic() < deadline:
                got = records(receiver.db)
                if any(kind == "alarm" for _n, _s, kind, _d in got):
                    break
                assert proc.poll() is None, (tmp_path / "gateway.log").read_text()[-2000:]
                time.sleep(0.2)
        finally:
            procs.stop(proc)
        lap("report")
        console = board.log.read_bytes().decode(errors="replace")
        since_hello = board.log.read_bytes()[said_hello_at:].decode(errors="replace")

    assert got, f"nothing reached the receiver within {TEST_TIMEOUT_S:g} s; board console:\n" \
                f"{console[-2000:]}"
    assert {node for node, *_ in got} == {NODE}
    seqs = [seq for _n, seq, _k, _d in got]
    assert len(seqs) == len(set(seqs)), f"a record arrived twice: {seqs}"
    levels = [d for _n, _s, kind, d in got if kind == "level"]
    alarms = [d for _n, _s, kind, d in got if kind == "alarm"]
    assert levels and levels[0]["level_cm"] == LEVEL_CM, got
    # the level (50 cm) is above the new alarm threshold (30 cm), below critical (100 cm)
    assert alarms and alarms[-1]["state"] == "alarm", got
    assert "Traceback" not in since_hello, since_hello[-2000:]  # the node ran without error
    print(f"install chain in {time.monotonic() - t0:.1f} s: {laps}")
