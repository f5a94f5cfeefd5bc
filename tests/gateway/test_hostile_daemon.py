"""The real gateway daemon on loopback, a device on its pty claiming other node ids: refused,
raised as an identity alarm in /status and /metrics, bounded however many ids it tries, and
accepted by the operator with `roadside gateway accept`."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from roadside.gateway import protocol as p
from roadside.tools.sim import procs
from roadside.tools.sim.gateway_toml import write
from support.cli import roadside
from support.gateway_status import link_open

FRESH_IDS = 300


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bytes(resp.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_identity_alarm_in_status_and_metrics_then_accepted(tmp_path: Path,
                                                           fake_node: Any) -> None:
    listen = f"127.0.0.1:{_free_port()}"
    cfg = write(tmp_path / "gw.toml", [fake_node.path], tmp_path / "data", None, listen)
    log = tmp_path / "gw.log"
    proc = procs.spawn([sys.executable, "-m", "roadside.gateway.daemon", "--config",
                        str(cfg)], log)

    async def main() -> None:
        url = (await asyncio.to_thread(procs.wait_for_line, log, r"status on (http://\S+)",
                                       proc, 20)).group(1)
        base = url.rsplit("/", 1)[0]
        await link_open(url, fake_node.path)     # pyserial flushes the input on open
        fake_node.hello("wl-0001")
        await fake_node.expect(p.Ack, seq=0)
        fake_node.records([1, 2])
        await fake_node.expect(p.Ack, seq=2)
        # A device on the cable tries many node ids: each refused, none kept.
        for i in range(FRESH_IDS):
            fake_node.hello(f"x-{i:05d}", next_seq=1, first_unacked=1)
            await fake_node.expect(p.Error, timeout=10)
        doc = json.loads(await asyncio.to_thread(_get, url))
        assert [n["id"] for n in doc["nodes"]] == ["wl-0001"]
        ident = doc["identity"]
        assert ident["refused"]["identity"] == FRESH_IDS
        assert len(ident["alarms"]) == 32                      # the bound of kept alarms
        assert ident["alarms"][0]["port"] == fake_node.path
        assert ident["alarms"][0]["node"] == "x-00000"
        metrics = (await asyncio.to_thread(_get, f"{base}/metrics")).decode()
        assert f'roadside_gateway_hello_refused_total{{reason="identity"}} {FRESH_IDS}.0' \
            in metrics
        assert "roadside_gateway_identity_alarms 32.0" in metrics
        assert "x-00" not in metrics and len(metrics) < 20_000
        # Accepting is an operator's act: without the data_dir/api.token token it is refused.
        req = urllib.request.Request(f"{base}/links/accept", method="POST",
                                     data=json.dumps({"port": fake_node.path,
                                                      "node": "x-00007"}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            await asyncio.to_thread(urllib.request.urlopen, req, timeout=5)
            raise AssertionError("accepted without the API token")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        # The operator accepts one of them (the device really was replaced).
        code, out, err = await roadside("gateway", "accept", "--config", str(cfg),
                                        fake_node.path, "x-00007")
        assert code == 0 and "x-00007 accepted on" in out, err
        fake_node.hello("x-00007")
        await fake_node.expect(p.Ack, seq=0, timeout=10)
        doc = json.loads(await asyncio.to_thread(_get, url))
        assert sorted(n["id"] for n in doc["nodes"]) == ["wl-0001", "x-00007"]
        assert all(a["node"] != "x-00007" for a in doc["identity"]["alarms"])
        # A node bound elsewhere cannot be accepted: a one-line error, exit 2.
        code, _, err = await roadside("gateway", "accept", "--config", str(cfg), "", "x")
        assert code == 2 and "body: must be a JSON object" in err

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
    finally:
        procs.stop(proc)
    assert "HELLO as x-00000 refused" in log.read_text()
    assert log.read_text().count("refused: ") <= 40            # logged once per id kept
