"""/metrics (parsed with prometheus_client's own parser), /healthz and JSON logs.

The daemon runs in the test's event loop (daemon.main) with a fake node on a real pty, a real
SQLite queue and a real aiohttp backend on a free loopback port.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import time
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cobs import cobs
from prometheus_client.parser import text_string_to_metric_families
from roadside.gateway import daemon, logs
from roadside.gateway import protocol as p
from roadside.gateway.config import ConfigError, load
from roadside.tools.sim.gateway_toml import GatewaySettings, write
from support.gateway_status import link_open


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def sink(status: int = 200):
    """A backend that answers every POST with `status`; yields (url, list of bodies)."""
    bodies: list[bytes] = []

    async def post(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(status=status, text="ok")

    app = web.Application()
    app.router.add_post("/batches", post)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/batches", bodies
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running(cfg: Path):
    """daemon.main on `cfg` in this loop; yields the status base URL; stops it cleanly."""
    config = load(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.main(config, stop))
    base = f"http://{config.status.host}:{config.status.port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(base + "/healthz"):
                    break
            except aiohttp.ClientError:
                assert not task.done(), task
                await asyncio.sleep(0.02)
        try:
            yield base, http
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 10) == 0


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict, name: str, sample: str | None = None, **labels: str) -> float:
    fam = fams[name]
    for s in fam.samples:
        if (sample is None or s.name == sample) and all(s.labels.get(k) == v
                                                        for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no {name} {labels}: {fam.samples}")


def test_metrics_parse_and_count_everything(tmp_path, fake_node):
    # A port name with a quote and a backslash: label values must be escaped on the wire.
    odd = tmp_path / 'tty"odd\\1'
    os.symlink(fake_node.path, odd)

    async def main():
        async with sink() as (url, bodies):
            cfg = write(tmp_path / "gw.toml", [str(odd)], tmp_path / "data", url,
                        f"127.0.0.1:{free_port()}", GatewaySettings(max_records=5,
                                                                     max_age_s=0.05))
            async with running(cfg) as (base, http):
                await link_open(base + "/status", str(odd))   # pyserial flushes on open
                fake_node.hello("wl-0009")
                await fake_node.expect(p.Ack, seq=0)
                fake_node.records([1, 2, 3])
                await fake_node.expect(p.Ack, seq=3)
                fake_node.records([2, 3, 4])          # 2 and 3 again: duplicates
                await fake_node.expect(p.Ack, seq=4)
                payload = p.encode_message({0: p.ACK, 1: 1})
                fake_node.write(cobs.encode(payload + b"\x00\x00\x00\x00") + b"\x00")  # crc
                fake_node.write(b"\x01\x00")         # an empty body: shorter than a CRC
                fake_node.write(b"\x05\x01\x00")     # a COBS code past the end: cobs
                fake_node.send(b"\xa1\x00\x63")        # CBOR with a good CRC, not a message
                await fake_node.expect(p.Error, code=p.ERR_MALFORMED)
                for _ in range(200):
                    async with http.get(base + "/status") as r:
                        if bodies and (await r.json())["queue"]["depth"] == 0:
                            break
                    await asyncio.sleep(0.05)
                async with http.get(base + "/metrics") as r:
                    assert r.status == 200
                    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                    return await r.text()

    started = time.time()
    text = asyncio.run(asyncio.wait_for(main(), 30))
    assert "# HELP roadside_link_frames_total" in text
    assert "# TYPE roadside_link_errors_total counter" in text
    fams = families(text)     # the reference parser accepts the whole document
    link = str(odd)
    assert link.replace("\\", "\\\\").replace('"', '\\"') in text
    assert value(fams, "roadside_link_frames", link=link) == 4   # hello, 2 x records, bad
    assert value(fams, "roadside_link_errors", link=link, reason="crc") == 2
    assert value(fams, "roadside_link_errors", link=link, reason="malformed") == 1
    assert value(fams, "roadside_link_errors", link=link, reason="cobs") == 1
    assert value(fams, "roadside_link_errors", link=link, reason="oversize") == 0
    assert value(fams, "roadside_link_bytes", link=link, direction="in") > 50
    assert value(fams, "roadside_link_up", link=link) == 1
    # Prometheus naming: no state label on an _up gauge, base units, timestamps not ages.
    for sample in (*fams["roadside_link_up"].samples, *fams["roadside_uplink_up"].samples):
        assert "state" not in sample.labels, sample
    assert not any(name.endswith("_cm") or name == "roadside_gateway_uptime_seconds"
                   for name in fams), sorted(fams)
    assert abs(value(fams, "roadside_gateway_start_time_seconds") - started) < 60
    assert value(fams, "roadside_node_records", node="wl-0009") == 4
    assert value(fams, "roadside_node_duplicates", node="wl-0009") == 2
    assert value(fams, "roadside_node_gaps", node="wl-0009") == 0
    assert value(fams, "roadside_node_level_metres", node="wl-0009") == 0.14
    seen = value(fams, "roadside_node_last_seen_timestamp_seconds", node="wl-0009")
    assert started - 1 <= seen <= time.time()
    assert value(fams, "roadside_node_link_state", node="wl-0009", state="up") == 1
    assert value(fams, "roadside_queue_duplicates") == 2
    assert value(fams, "roadside_queue_evictions") == 0
    assert value(fams, "roadside_queue_bytes") == 0     # all delivered
    assert value(fams, "roadside_queue_file_bytes") > 0
    assert value(fams, "roadside_queue_max_bytes") == 256 * 1024 * 1024
    assert fams["roadside_queue_depth"].type == "gauge"
    assert value(fams, "roadside_uplink_delivered_records", uplink="http") == 4
    assert value(fams, "roadside_uplink_failures", uplink="http") == 0
    assert value(fams, "roadside_uplink_up", uplink="http") == 1
    hist = fams["roadside_uplink_post_seconds"]
    assert hist.type == "histogram"
    assert value(fams, "roadside_uplink_post_seconds", "roadside_uplink_post_seconds_count",
                 uplink="http", outcome="ok") >= 1
    assert value(fams, "roadside_gateway_info", gateway="gw-demo", site="demo") == 1


def test_healthz_503_with_one_json_line_when_uplink_and_link_stay_down(tmp_path):
    missing = str(tmp_path / "ttyUSB-gone")
    cfg = write(tmp_path / "gw.toml", [missing], tmp_path / "data",
                f"http://127.0.0.1:{free_port()}/batches", f"127.0.0.1:{free_port()}")
    cfg.write_text(cfg.read_text().replace(
        "[status]\n", "[status]\nlink_down_s = 0.6\nuplink_down_s = 0.6\n"))

    async def main():
        async with running(cfg) as (base, http):
            async with http.get(base + "/healthz") as r:
                first = r.status, await r.text()
            # Something must go to the uplink for it to find the backend down.
            await asyncio.sleep(2.0)
            async with http.get(base + "/healthz") as r:
                return first, r.status, r.headers["Content-Type"], await r.text()

    first, code, ctype, body = asyncio.run(asyncio.wait_for(main(), 20))
    assert first == (200, "ok")
    assert code == 503 and ctype.startswith("application/json")
    assert body.endswith("\n") and body.count("\n") == 1
    doc = json.loads(body)
    assert doc["status"] == "unhealthy"
    assert doc["reason"].startswith(f"link {missing} missing for ")
    assert doc["problems"] == [doc["reason"]]     # no records: the uplink never tried


def test_healthz_uplink_down(tmp_path, fake_node):
    cfg = write(tmp_path / "gw.toml", [fake_node.path], tmp_path / "data",
                f"http://127.0.0.1:{free_port()}/batches", f"127.0.0.1:{free_port()}",
                GatewaySettings(max_age_s=0.05))
    cfg.write_text(cfg.read_text().replace("[status]\n", "[status]\nuplink_down_s = 0.5\n"))

    async def main():
        async with running(cfg) as (base, http):
            await link_open(base + "/status", fake_node.path)
            fake_node.hello("wl-0001")
            fake_node.records([1])
            await fake_node.expect(p.Ack, seq=1)
            for _ in range(100):
                async with http.get(base + "/healthz") as r:
                    if r.status == 503:
                        return json.loads(await r.text())
                await asyncio.sleep(0.1)
            raise AssertionError("never unhealthy")

    doc = asyncio.run(asyncio.wait_for(main(), 20))
    assert doc["reason"].startswith("uplink http down for "), doc
    assert "cannot reach" in doc["reason"]


def test_json_logs_one_object_per_line():
    stream = io.StringIO()
    try:
        logs.setup("json", "debug", stream)
        log = logging.getLogger("roadside.gateway.link")
        log.debug("opened", extra=logs.fields(port="/dev/ttyUSB0", baud=115200))
        logging.getLogger("roadside.gateway").warning('quote " and\nnewline')
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("roadside.gateway.session").exception("failed")
        logs.setup("text", "warning", stream)
        log.info("hidden at warning level")
        log.warning("text line", extra=logs.fields(node="wl-1"))
    finally:
        logs.setup()
    lines = stream.getvalue().splitlines()
    docs = [json.loads(line) for line in lines[:3]]
    assert docs[0]["level"] == "debug" and docs[0]["component"] == "link"
    assert docs[0]["msg"] == "opened" and docs[0]["port"] == "/dev/ttyUSB0"
    assert docs[0]["baud"] == 115200 and docs[0]["ts"].endswith("Z")
    assert list(docs[0])[:4] == ["ts", "level", "component", "msg"]
    assert docs[1]["component"] == "gateway" and docs[1]["msg"] == 'quote " and\nnewline'
    assert docs[2]["level"] == "error" and "ValueError: boom" in docs[2]["exc"]
    assert len(lines) == 4 and lines[3].endswith('roadside.gateway.link: text line node="wl-1"')


@pytest.mark.parametrize("extra, expected", [
    ('[log]\nformat = "xml"\n', "log.format: must be one of 'text', 'json', got 'xml'"),
    ('[log]\nlevel = "loud"\n', "log.level: must be one of 'debug', 'info', 'warning', 'error',"
                                " got 'loud'"),
    ("[log]\ncolour = 1\n", "log.colour: unknown key; allowed keys: format, level"),
    ("[status]\nlink_down_s = -1\n", "status.link_down_s: must be a number 0..86400, got -1"),
])
def test_log_and_health_config_errors(tmp_path, extra, expected):
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[gateway]\nid = "g"\nsite = "s"\n' + extra)
    with pytest.raises(ConfigError) as exc:
        load(cfg)
    assert str(exc.value) == expected


def test_log_config_defaults_and_json(tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[gateway]\nid = "g"\nsite = "s"\n')
    c = load(cfg)
    assert (c.log.format, c.log.level) == ("text", "info")
    assert (c.status.link_down_s, c.status.uplink_down_s) == (60.0, 300.0)
    cfg.write_text('[gateway]\nid = "g"\nsite = "s"\n[log]\nformat = "json"\nlevel = "debug"\n')
    assert load(cfg).log.format == "json"
