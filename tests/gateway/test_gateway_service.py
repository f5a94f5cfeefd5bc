"""The daemon as a systemd service: the notify protocol on a real NOTIFY_SOCKET, and SIGHUP
reloading the config file (changed links and uplinks restarted, sessions and queue kept, a
bad file refused with one line)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from roadside.gateway import protocol as p
from roadside.tools.sim import procs
from roadside.tools.sim.gateway_toml import GatewaySettings, render, write
from roadside.tools.sim.receiver_store import read_seqs


def status(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


async def _link_open(url):
    for _ in range(200):
        if status(url)["links"][0]["state"] == "open":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the link never opened")


async def _exchange(node, seqs, ack_expected):
    node.records(seqs)
    await node.expect(p.Ack, seq=ack_expected, timeout=10)


def _datagrams(sock: socket.socket, until: str, timeout: float = 10) -> list[dict[str, str]]:
    """Datagrams from the daemon until one holds the line `until` (fails after `timeout`)."""
    got: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no {until} from the daemon; got {got}") from None
        msg = dict(line.split("=", 1) for line in data.decode().splitlines())
        got.append(msg)
        key, value = until.split("=", 1)
        if msg.get(key) == value:
            return got


def _count_lines(log: Path, pattern: str, n: int, proc, timeout: float = 15) -> list[str]:
    """Wait until `n` lines of `log` match `pattern`; return them."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if rx.search(ln)]
        if len(lines) >= n:
            return lines
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, f"{n} x {pattern!r} not in {log.read_text()[-2000:]}"
        time.sleep(0.02)


def test_notify_socket_ready_watchdog_reload_stopping(tmp_path):
    cfg = write(tmp_path / "gw.toml", [str(tmp_path / "ttyUSB-nope")], tmp_path / "data",
                "http://127.0.0.1:9/batches", "127.0.0.1:0")
    short = Path(tempfile.mkdtemp(prefix="sdn"))      # AF_UNIX paths: 108 bytes at most
    path = short / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    log = tmp_path / "gw.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}
    proc = procs.spawn([sys.executable, "-m", "roadside.gateway.daemon", "--config",
                        str(cfg)], log, env=env)
    try:
        got = _datagrams(sock, "READY=1")
        assert got[-1]["STATUS"].startswith("1 links, 1 uplinks, status on port ")
        procs.wait_for_line(log, r"status on http://", proc, 5)   # READY after it serves
        # WATCHDOG_USEC 0.2 s: a ping every 0.1 s while the loop runs.
        _datagrams(sock, "WATCHDOG=1")
        _datagrams(sock, "WATCHDOG=1")
        proc.send_signal(signal.SIGHUP)
        got = _datagrams(sock, "RELOADING=1")
        usec = int(got[-1]["MONOTONIC_USEC"])
        assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 10
        _datagrams(sock, "READY=1")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _datagrams(sock, "STOPPING=1")
        assert proc.wait(10) == 0
    finally:
        procs.stop(proc)
        sock.close()
        path.unlink(missing_ok=True)
        short.rmdir()


def test_sighup_reloads_links_uplinks_batch_log_and_refuses_a_bad_file(
        tmp_path, fake_node, start_receiver):
    r1, r2 = start_receiver(), start_receiver()
    gone, added = str(tmp_path / "ttyUSB-gone"), str(tmp_path / "ttyUSB-added")
    data = tmp_path / "data"
    settings = GatewaySettings(max_records=10, max_age_s=0.2)
    cfg = write(tmp_path / "gw.toml", [fake_node.path, gone], data, r1.batches_url,
                "127.0.0.1:0", settings)
    log = tmp_path / "gw.log"

    async def until_delivered(receiver, seqs):
        for _ in range(200):
            if read_seqs(receiver.db).get("wl-0007", [])[-1:] == seqs[-1:]:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{seqs} not at {receiver.batches_url}")

    async def before(url):
        await _link_open(url)
        fake_node.hello("wl-0007")
        await fake_node.expect(p.Time, timeout=10)
        await fake_node.expect(p.Ack, seq=0)
        await _exchange(fake_node, list(range(1, 9)), 8)
        await until_delivered(r1, list(range(1, 9)))

    async def after(seqs):
        # No new HELLO: the node's session on the unchanged link survived the reload.
        await _exchange(fake_node, seqs, seqs[-1])
        await until_delivered(r2, seqs)

    async def rehello(url):
        await _link_open(url)
        fake_node.records([17])
        assert (await fake_node.expect(p.Error, timeout=10)).code == p.ERR_NO_SESSION
        fake_node.hello("wl-0007", next_seq=18, first_unacked=17)
        await fake_node.expect(p.Ack, seq=16, timeout=10)
        await after([17])

    proc, url = procs.start_gateway(cfg, log)
    try:
        asyncio.run(asyncio.wait_for(before(url), 30))
        settings.max_records = 5
        cfg.write_text(render([fake_node.path, added], data, r2.batches_url, "127.0.0.1:0",
                              settings) + '\n[log]\nformat = "json"\n')
        proc.send_signal(signal.SIGHUP)
        (line,) = _count_lines(log, r'"msg": "reloaded ', 1, proc)
        doc = json.loads(line)
        assert doc["level"] == "info" and doc["component"] == "gateway"
        assert sorted(doc["changes"]) == sorted(
            ["log", f"link {gone} removed", f"link {added} added", "uplink http changed",
             "batch"])
        st = status(url)
        assert [lk["port"] for lk in st["links"]] == [fake_node.path, added]
        assert st["uplinks"][0]["url"] == r2.batches_url
        asyncio.run(asyncio.wait_for(after(list(range(9, 17))), 30))
        assert read_seqs(r1.db) == {"wl-0007": list(range(1, 9))}

        # A changed link (its baud rate) is reopened: its node's session ends, and the node
        # says HELLO again as after a restart. [status] listen moves the status server.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            new_port = s.getsockname()[1]
        settings.baudrate = 57600
        cfg.write_text(render([fake_node.path, added], data, r2.batches_url,
                              f"127.0.0.1:{new_port}", settings) + '\n[log]\nformat = "json"\n')
        proc.send_signal(signal.SIGHUP)
        line = _count_lines(log, r'"msg": "reloaded ', 2, proc)[-1]
        assert sorted(json.loads(line)["changes"]) == sorted(
            [f"link {fake_node.path} changed", f"link {added} changed", "status"])
        url = f"http://127.0.0.1:{new_port}/status"
        asyncio.run(asyncio.wait_for(rehello(url), 30))

        cfg.write_text(cfg.read_text().replace("max_records = 5", 'max_records = "x"'))
        proc.send_signal(signal.SIGHUP)
        (line,) = _count_lines(log, r"reload refused", 1, proc)
        assert json.loads(line)["msg"] == (
            f"reload refused: {cfg}: batch.max_records: must be an integer 1..10000,"
            f" got 'x'; still running on the previous config")
        asyncio.run(asyncio.wait_for(after(list(range(18, 21))), 30))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        procs.stop(proc)
    assert read_seqs(r2.db) == {"wl-0007": list(range(9, 21))}
    text = log.read_text()
    # The first reload kept the node's link open; the second (its baud rate) reopened it once.
    assert text.count(f"serial port {fake_node.path} open at 115200 baud") == 1
    assert text.count(f"serial port {fake_node.path} open at 57600 baud") == 1
    assert text.count(f"serial port {added} not found") == 2    # added, then changed
    assert "Traceback" not in text


def _unit(text: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            keys.setdefault(k, []).append(v)
    return keys


def test_the_shipped_unit_is_notify_with_watchdog_and_hardening(tmp_path):
    from roadside.tools.resources import SYSTEMD_UNIT
    proc = subprocess.run([sys.executable, "-m", "roadside.tools.cli", "gateway", "unit"],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0 and proc.stdout == SYSTEMD_UNIT.read_text()
    keys = _unit(proc.stdout)
    for key, value in (("Type", "notify"), ("WatchdogSec", "30"), ("User", "roadside"),
                       ("StateDirectory", "roadside"), ("ProtectSystem", "strict"),
                       ("NoNewPrivileges", "yes"), ("ExecReload", "/bin/kill -HUP $MAINPID")):
        assert keys[key] == [value], key
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    # systemd's own parser: no unknown key or bad value (the binaries swapped for ones that
    # exist here, which `verify` checks).
    unit = tmp_path / "roadside-gateway.service"
    unit.write_text(proc.stdout.replace("/usr/local/bin/roadside", "/bin/true")
                    .replace("/bin/kill", "/bin/true"))
    check = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                           timeout=30)
    assert str(unit) not in check.stderr, check.stderr


def test_sighup_restarts_an_uplink_whose_token_file_was_rewritten(tmp_path):
    token = tmp_path / "city.token"
    token.write_text("first\n")
    token.chmod(0o600)
    cfg = write(tmp_path / "gw.toml", [str(tmp_path / "ttyUSB-nope")], tmp_path / "data",
                "http://127.0.0.1:9/batches", "127.0.0.1:0")
    cfg.write_text(cfg.read_text().replace(
        'url = "http://127.0.0.1:9/batches"\n',
        f'url = "http://127.0.0.1:9/batches"\ntoken_file = "{token}"\n'
        'insecure_credentials = true\n'))
    log = tmp_path / "gw.log"
    proc, _ = procs.start_gateway(cfg, log)
    try:
        proc.send_signal(signal.SIGHUP)
        _count_lines(log, r"reloaded .*: nothing changed changes=\[\]", 1, proc)
        token.write_text("second\n")          # rotated in place: no key of the config changed
        proc.send_signal(signal.SIGHUP)
        _count_lines(log, r"reloaded .*: uplink http changed", 1, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        procs.stop(proc)
    assert "second" not in log.read_text() and "first" not in log.read_text()
