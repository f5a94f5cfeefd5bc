"""The daemon as a subprocess: config errors, /status, SIGTERM, a fake node end to end."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request

from roadside.gateway import protocol as p
from roadside.tools.sim import procs
from roadside.tools.sim.gateway_toml import GatewaySettings, write
from roadside.tools.sim.receiver_store import read_seqs
from support.gateway_status import link_open


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


def status(url: str) -> dict:
    return json.loads(get(url)[1])


def test_config_error_is_one_line_and_exit_2(tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[gateway]\nid = "g"\nsite = "s"\n[batch]\nmax_records = "x"\n')
    proc = subprocess.run([sys.executable, "-m", "roadside.gateway.daemon", "--config",
                           str(cfg)], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"roadside gateway: {cfg}: batch.max_records: must be an"
                                   f" integer 1..10000, got 'x'")


def test_status_missing_port_and_sigterm(tmp_path):
    missing = str(tmp_path / "ttyUSB-nope")
    cfg = write(tmp_path / "gw.toml", [missing], tmp_path / "data",
                "http://127.0.0.1:9/batches", "127.0.0.1:0")
    log = tmp_path / "gw.log"
    proc, url = procs.start_gateway(cfg, log)
    try:
        assert get(url.replace("/status", "/healthz")) == (200, "ok")
        st = status(url)
        assert st["gateway"] == "gw-demo" and st["site"] == "demo" and st["nodes"] == []
        assert st["queue"] == {"depth": 0, "batches_pending": 0, "duplicates": 0, "gaps": 0,
                               "delivered": 0, "dead_letters": 0, "bytes": 0,
                               "max_bytes": 256 * 1024 * 1024, "evicted": 0,
                               "backpressure": False,
                               "storage": {"error": None, "disk_full": False, "errors": 0,
                                           "recovered": []}}
        (link,) = st["links"]
        assert link["port"] == missing and link["state"] == "missing"
        assert {k: link[k] for k in ("frames", "crc", "cobs", "oversize", "malformed")} == {
            "frames": 0, "crc": 0, "cobs": 0, "oversize": 0, "malformed": 0}
        (up,) = st["uplinks"]
        assert up["name"] == "http" and up["url"] == "http://127.0.0.1:9/batches"
        procs.wait_for_line(log, f"serial port {missing} not found: check the cable", proc, 5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        procs.stop(proc)
    # logged once, not on every retry (one line: its message and its error="not found" field)
    assert sum("not found" in line for line in log.read_text().splitlines()) == 1


async def _exchange(node, seqs, ack_expected):
    node.records(seqs)
    await node.expect(p.Ack, seq=ack_expected, timeout=10)


def test_fake_node_to_receiver_with_kill_9_in_between(tmp_path, fake_node, start_receiver):
    receiver = start_receiver()
    cfg = write(tmp_path / "gw.toml", [fake_node.path], tmp_path / "data",
                receiver.batches_url, "127.0.0.1:0",
                GatewaySettings(max_records=10, max_age_s=0.2))
    log = tmp_path / "gw.log"

    async def first_run(url):
        await link_open(url, fake_node.path)     # pyserial flushes the input on open
        fake_node.hello("wl-0007")
        await fake_node.expect(p.Time, timeout=10)
        await fake_node.expect(p.Ack, seq=0)
        for start in range(1, 41, 8):
            await _exchange(fake_node, list(range(start, start + 8)), start + 7)
        st = status(url)
        (n,) = st["nodes"]
        assert (n["id"], n["role"], n["link"], n["records"], n["acked"]) == (
            "wl-0007", "water", "up", 40, 40)
        assert n["last_level"] == 50.0 and n["last_seen_s"] < 5
        assert st["links"][0]["frames"] == 6 and st["links"][0]["state"] == "open"

    async def second_run(url):
        await link_open(url, fake_node.path)
        # The restarted gateway has no session: records get ERROR 3, the node says HELLO.
        fake_node.records([41, 42])
        assert (await fake_node.expect(p.Error, timeout=10)).code == p.ERR_NO_SESSION
        fake_node.hello("wl-0007", next_seq=43, first_unacked=41)
        await fake_node.expect(p.Ack, seq=40)
        await _exchange(fake_node, [41, 42], 42)
        for _ in range(300):              # the uplink's batch after a restart: up to 30 s
            st = status(url)
            if st["queue"]["depth"] == 0 and st["uplinks"][0]["state"] == "idle":
                break
            await asyncio.sleep(0.1)
        assert st["queue"]["depth"] == 0, st
        assert st["uplinks"][0]["state"] == "idle"

    proc, url = procs.start_gateway(cfg, log)
    try:
        asyncio.run(asyncio.wait_for(first_run(url), 30))
        procs.kill(proc)                  # kill -9: no clean shutdown
    finally:
        procs.stop(proc)
    proc, url = procs.start_gateway(cfg, tmp_path / "gw2.log")
    try:
        asyncio.run(asyncio.wait_for(second_run(url), 60))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        procs.stop(proc)
    assert read_seqs(receiver.db) == {"wl-0007": list(range(1, 43))}
