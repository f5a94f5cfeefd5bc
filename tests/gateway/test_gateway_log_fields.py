"""JSON logs carry the structured fields GATEWAY.md promises (node, link, uplink, batch, seq
range, error), from the real daemon: a fake node on a pty, an uplink nobody listens on."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import urllib.request

from roadside.gateway import protocol as p
from roadside.tools.sim import procs
from roadside.tools.sim.gateway_toml import GatewaySettings, write


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lines(log) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _wait(log, proc, pred, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        for doc in _lines(log):
            if pred(doc):
                return doc
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)


def test_json_lines_carry_node_link_uplink_batch_seqs_error(tmp_path, fake_node):
    down = f"http://127.0.0.1:{_free_port()}/batches"      # nothing listens there
    cfg = write(tmp_path / "gw.toml", [fake_node.path], tmp_path / "data", down,
                "127.0.0.1:0", GatewaySettings(max_records=4, max_age_s=0.2))
    cfg.write_text(cfg.read_text() + '\n[log]\nformat = "json"\n')
    log = tmp_path / "gw.log"
    proc = procs.spawn([sys.executable, "-m", "roadside.gateway.daemon", "--config", str(cfg)],
                       log)
    try:
        started = _wait(log, proc, lambda d: d["msg"].startswith("status on "))
        url = started["msg"].removeprefix("status on ")
        opened = _wait(log, proc, lambda d: d["msg"].startswith("serial port "))
        assert opened["component"] == "link" and opened["link"] == fake_node.path

        async def node():
            for _ in range(200):
                with urllib.request.urlopen(url, timeout=5) as r:
                    if json.loads(r.read())["links"][0]["state"] == "open":
                        break
                await asyncio.sleep(0.05)
            fake_node.hello("wl-0007")
            await fake_node.expect(p.Ack, seq=0, timeout=10)
            fake_node.records([1, 2, 3, 4])
            await fake_node.expect(p.Ack, seq=4, timeout=10)
            fake_node.records([7, 8], from_seq=7)      # 5 and 6 declared gone (from rule)
            await fake_node.expect(p.Ack, seq=8, timeout=10)

        asyncio.run(asyncio.wait_for(node(), 30))
        hello = _wait(log, proc, lambda d: d["msg"].startswith(f"{fake_node.path}: HELLO"))
        assert (hello["component"], hello["link"], hello["node"], hello["ack"]) == (
            "session", fake_node.path, "wl-0007", 0)
        gap = _wait(log, proc, lambda d: "gone for good" in d["msg"])
        assert (gap["level"], gap["node"], gap["link"], gap["gaps"], gap["seq_to"]) == (
            "warning", "wl-0007", fake_node.path, 2, 6)
        post = _wait(log, proc, lambda d: d["msg"].startswith("uplink http: batch"))
        assert post["component"] == "uplink" and post["level"] == "warning"
        assert post["uplink"] == "http" and post["batch"] in post["msg"]
        assert post["records"] == 4 and post["seqs"] == {"wl-0007": [1, 4]}
        assert post["error"].startswith(f"cannot reach {down}") and post["attempt"] == 1
        assert set(post) >= {"ts", "level", "component", "msg"}
    finally:
        procs.stop(proc)
