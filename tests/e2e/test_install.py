"""The installer's walk from a shell, as docs/TOOLS.md ("The whole install from a shell")
writes it, through the `roadside` script and nothing mocked but the hardware:

`roadside sim rom` starts a virtual ESP32 ROM bootloader and a test image, `roadside flash`
writes it, Ctrl-C stops the ROM; `roadside sim board` starts the same board running
MicroPython (the unix port on a LittleFS image, its REPL on a pty), `roadside deploy` puts
the node firmware on it, `roadside config set` changes the running node's thresholds over
its data link, `roadside monitor` sees its HELLO, then `roadside gateway run` (with the
gateway.toml of the doc) takes that link and the node's records reach `roadside receiver`.

Every port comes from the output of the command that started its counterpart, as a user
reads it. Bounded (TEST_TIMEOUT_S for the whole walk, a deadline per wait), loopback and
free ports only, every process stopped after (the virtual ROM and board by Ctrl-C).
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from roadside.tools.sim import procs

pytest.importorskip("esp32_mock_bootloader")

ROADSIDE = str(Path(sys.executable).parent / "roadside")
DOC = Path(__file__).resolve().parents[2] / "docs" / "TOOLS.md"
BOARD = "roadside-water-level-r1"
NODE = "wl-000001"  # role prefix + the default MAC's last three bytes, at flash and deploy
TEST_TIMEOUT_S = 90.0
# the virtual board's sensor is 2500 mm above the water; datum 3000 mm: level 50.0 cm
LEVEL_CM = 50.0


class Walk:
    """The commands of the walk, each bounded by the walk's deadline."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.deadline = time.monotonic() + TEST_TIMEOUT_S
        self.started: list[subprocess.Popen] = []

    def left(self) -> float:
        rest = self.deadline - time.monotonic()
        assert rest > 0, f"the install walk took longer than {TEST_TIMEOUT_S:g} s"
        return rest

    def run(self, *argv: str) -> str:
        """`roadside ARGV` to completion; its stdout."""
        done = subprocess.run([ROADSIDE, *argv], capture_output=True, text=True,
                              timeout=self.left(), cwd=self.tmp, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"roadside {' '.join(argv)} exited " \
                                     f"{done.returncode}: {done.stderr}"
        return done.stdout

    def start(self, name: str, *argv: str, ready: str) -> tuple[subprocess.Popen, re.Match]:
        """`roadside ARGV` in the background (its own process group, output in NAME.log);
        returns once a line matches `ready`."""
        proc = procs.spawn([ROADSIDE, *argv], self.tmp / f"{name}.log", cwd=self.tmp)
        self.started.append(proc)
        return proc, procs.wait_for_line(self.tmp / f"{name}.log", ready, proc,
                                         timeout=min(30.0, self.left()))

    def line(self, name: str, pattern: str) -> str:
        m = re.search(pattern, (self.tmp / f"{name}.log").read_text(), re.M)
        assert m, f"no {pattern!r} in {name}.log"
        return m.group(1)

    def ctrl_c(self, name: str, proc: subprocess.Popen) -> None:
        """Ctrl-C in its terminal (SIGINT to its process group): it stops, cleanly."""
        procs._signal_group(proc, signal.SIGINT)
        try:
            proc.wait(min(15.0, self.left()))
        finally:
            procs.stop(proc)
        out = (self.tmp / f"{name}.log").read_text()
        assert proc.returncode == 0 and out.rstrip().endswith("stopped"), out[-1500:]

    def close(self) -> None:
        for proc in self.started:
            procs.stop(proc)


def gateway_toml(link: str, data_dir: Path, batches_url: str) -> str:
    """The gateway.toml of the doc's walk, with this run's link, receiver and free ports."""
    m = re.search(r"^cat > gateway\.toml <<EOF\n(.*?)^EOF$", DOC.read_text(), re.S | re.M)
    assert m, f"no gateway.toml heredoc in {DOC}"
    text = m.group(1)
    for old, new in (('"$LINK"', json.dumps(link)),
                     ('"gw-data"', json.dumps(str(data_dir))),
                     ('"http://127.0.0.1:8080/batches"', json.dumps(batches_url)),
                     ('"127.0.0.1:8081"', '"127.0.0.1:0"')):
        assert old in text, f"the doc's gateway.toml has no {old}"
        text = text.replace(old, new)
    return text


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


def test_the_install_walk_from_a_shell(tmp_path: Path) -> None:
    walk = Walk(tmp_path)
    t0 = time.monotonic()
    laps: dict[str, float] = {}

    def lap(name: str) -> None:
        laps[name] = round(time.monotonic() - t0 - sum(laps.values()), 2)

    try:
        # 1. a board in its ROM bootloader; flash it; Ctrl-C
        rom, _ = walk.start("rom", "sim", "rom", "--dir", "rom", ready=r"^running")
        url = walk.line("rom", r"^port:\s+(socket://\S+)")
        image = walk.line("rom", r"^image:\s+(\S+)")
        flashed = json.loads(walk.run("flash", "--board", BOARD, "--port", url,
                                      "--image", image, "--json"))
        assert flashed["result"] == "ok" and flashed["verified"] is True, flashed
        assert flashed["node_id"] == NODE
        walk.ctrl_c("rom", rom)
        lap("flash")

        # 2. the same board running MicroPython; deploy the node firmware
        board, _ = walk.start("board", "sim", "board", "--dir", "board", ready=r"^running")
        usb = walk.line("board", r"^usb serial:\s+(\S+)")
        link = walk.line("board", r"^data link:\s+(\S+)")
        deployed = json.loads(walk.run("deploy", "--board", BOARD, "--role", "water",
                                       "--port", usb, "--link-port", link, "--json"))
        assert deployed["files"] == len(deployed["copied"]) > 10  # a blank board: all of it
        hello = deployed["hello"]
        assert (hello["node"], hello["role"], hello["board"]) == (NODE, "water", BOARD)
        lap("deploy")
        console = tmp_path / "board" / "console.log"
        said_hello_at = console.stat().st_size  # what the node printed since

        # 3. on site: thresholds below the water, over the running node's data link
        changed = json.loads(walk.run("config", "set", link, "alert_cm=20", "alarm_cm=30",
                                      "critical_cm=100", "--json"))["changed"]
        assert changed["thresholds.alarm_cm"] == {"old": 150.0, "new": 30.0}
        seen = [json.loads(x) for x in walk.run("monitor", "--port", link, "--count", "1",
                                                "--duration", "15", "--json").splitlines()
                if x.startswith("{")]
        hellos = [f for f in seen if f.get("type") == "HELLO"]
        assert hellos and hellos[0]["node"] == NODE, seen
        lap("config")

        # 4. the backend and the gateway (with the doc's gateway.toml)
        _rx, m = walk.start("receiver", "receiver", "--listen", "127.0.0.1:0", "--db",
                            "receiver.sqlite", ready=r"listening on (http://\S+)")
        (tmp_path / "gateway.toml").write_text(
            gateway_toml(link, tmp_path / "gw-data", m.group(1) + "/batches"))
        walk.run("gateway", "check", "--config", "gateway.toml")
        gw, _ = walk.start("gateway", "gateway", "run", "--config", "gateway.toml",
                           ready=r"status on http://")
        got: list = []
        while time.monotonic() < walk.deadline:
            got = records(tmp_path / "receiver.sqlite")
            if any(kind == "alarm" for _n, _s, kind, _d in got):
                break
            assert gw.poll() is None, (tmp_path / "gateway.log").read_text()[-2000:]
            time.sleep(0.2)
        lap("report")
        since_hello = console.read_bytes()[said_hello_at:].decode(errors="replace")
        walk.ctrl_c("board", board)
    finally:
        walk.close()

    assert got, f"nothing reached the receiver within {TEST_TIMEOUT_S:g} s; board console:\n" \
                f"{since_hello[-2000:]}"
    assert {node for node, *_ in got} == {NODE}
    seqs = [seq for _n, seq, _k, _d in got]
    assert len(seqs) == len(set(seqs)), f"a record arrived twice: {seqs}"
    levels = [d for _n, _s, kind, d in got if kind == "level"]
    alarms = [d for _n, _s, kind, d in got if kind == "alarm"]
    assert levels and levels[0]["level_cm"] == LEVEL_CM, got
    # the level (50 cm) is above the new alarm threshold (30 cm), below critical (100 cm)
    assert alarms and alarms[-1]["state"] == "alarm", got
    assert "Traceback" not in since_hello, since_hello[-2000:]  # the node ran without error
    print(f"install walk in {time.monotonic() - t0:.1f} s: {laps}")
