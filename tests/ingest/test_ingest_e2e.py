"""`roadside ingest` as real processes against a real throwaway PostgreSQL, with the real
gateway daemon delivering to it over HTTP (and over MQTT through a real mosquitto): the
reference receiver's answers, exactly once across replays, an ingest process killed mid-stream,
and PostgreSQL restarted under load."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cbor2
import paho.mqtt.publish as publish
import pytest
from roadside.tools.sim import procs
from roadside.tools.sim.gateway_toml import GatewaySettings, link_sections
from roadside.tools.sim.light_node import LightNode
from support import system
from support.batches import post
from support.mosquitto import MOSQUITTO, SKIP_REASON, Broker, free_port
from support.postgres import PgCluster


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def record(node: str, seq: int, kind: str = "level", **over) -> dict:
    data = ({"state": "alarm", "level_cm": 180.0, "previous": "alert"} if kind == "alarm"
            else {"level_cm": 12.5 + seq, "rate_cm_per_min": 0.0, "distance_mm": 1875})
    r = {"node": node, "seq": seq, "t": int(time.time()), "kind": kind, "role": "water",
         "synced": True, "priority": kind == "alarm", "data": data}
    r.update(over)
    return r


def batch(bid: str, records: list[dict]) -> dict:
    return {"batch": bid, "gateway": "gw-1", "site": "test", "created": 1_700_000_000,
            "records": records}


def test_answers_like_the_reference_receiver_and_stores_once(tmp_path, pg, start_receiver):
    ref = start_receiver()
    ing = procs.start_ingest(pg.url, tmp_path / "ingest.log")
    try:
        b1 = cbor2.dumps(batch("b-1", [record("wl-1", 1), record("wl-2", 1), record("wl-1", 2)]))
        b2 = cbor2.dumps(batch("b-2", [record("wl-1", 2), record("wl-1", 3, "alarm")]))
        steps = [
            (b1, "application/cbor", "b-1"),          # stored
            (b1, "application/cbor", "b-1"),          # replay: 200, duplicate_batch
            (b2, "application/cbor", "b-2"),          # one record new, one seen
            (b2, "application/cbor", None),           # no header: the id is the key
            (b1, "application/json", "b-1"),          # 415
            (b1, "application/cbor", "other"),        # 400: key differs from the id
            (b"\xff\x00", "application/cbor", None),  # 400: not CBOR
            (cbor2.dumps({"batch": "x"}), "application/cbor", None),   # 400: not a batch
            (cbor2.dumps(batch("b-3", [record("wl-3", 2), record("wl-3", 1)])),
             "application/cbor", "b-3"),              # 400: seq order within a batch
        ]
        for body, ctype, key in steps:
            want, got = post(ref.url, body, ctype, key), post(ing.url, body, ctype, key)
            assert got[0] == want[0], (got, want)
            if want[0] == 200:
                assert json.loads(got[1]) == json.loads(want[1])
            elif want[0] == 400 and "uplink-batch" not in want[1]:
                assert got[1] == want[1]          # the same one line (shared checks)
            else:
                assert got[1].count("\n") == 1 and got[1].strip()
        rows = pg.query("SELECT node, seq, kind, priority, data->>'level_cm', batch"
                        " FROM records ORDER BY node, seq")
        assert [r[:2] for r in rows] == [("wl-1", 1), ("wl-1", 2), ("wl-1", 3), ("wl-2", 1)]
        assert rows[2][2:4] == ("alarm", True) and rows[1][5] == "b-1"
        answers = dict(pg.query("SELECT id, answer FROM batches"))
        assert answers["b-2"] == {"batch": "b-2", "duplicate_batch": False, "stored": 1,
                                  "duplicate_records": 1}
        assert dict((n, lvl) for n, lvl, *_ in pg.query(
            "SELECT node, level_cm FROM latest_water_level")) == {"wl-1": 14.5, "wl-2": 13.5}
        assert [(n, s) for n, s in pg.query("SELECT node, seq FROM recent_alarms")] == [
            ("wl-1", 3)]
        st = json.loads(get(ing.url + "/stats")[1])
        assert (st["batches"], st["records"], st["duplicate_batches"], st["refused"]) == (
            2, 4, 2, 4)
        assert get(ing.url + "/healthz") == (200, "ok\n")
    finally:
        procs.stop(ing.proc)


def test_init_db_is_idempotent_and_bad_urls_say_what_to_do(tmp_path, pg):
    cli = [sys.executable, "-m", "roadside.tools.cli", "ingest"]
    import subprocess

    for _ in range(2):
        out = subprocess.run([*cli, "--db", pg.url, "--init-db"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.startswith("schema ready in"), out.stderr
    assert pg.query("SELECT value FROM ingest_meta") == [("1",)]
    pg.query("UPDATE ingest_meta SET value = '2' RETURNING value")      # a newer roadside's
    newer = subprocess.run([*cli, "--db", pg.url, "--init-db"], capture_output=True,
                           text=True, timeout=60)
    assert newer.returncode == 2 and newer.stderr.strip().splitlines() == [
        "roadside ingest: error: the database's schema is version 2, newer than this roadside"
        " ingest's (1): run the roadside version that created it, or a newer one"]
    bad = subprocess.run([*cli, "--db", f"postgresql://roadside@127.0.0.1:{free_port()}/x",
                          "--init-db"], capture_output=True, text=True, timeout=60)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode != 0 and len(lines) == 1 and "is PostgreSQL running" in lines[0]
    none = subprocess.run(cli, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})
    assert none.returncode != 0 and "--db is required" in none.stderr


# -- the real gateway delivering ---------------------------------------------------------------

def gateway_toml(tmp_path: Path, nodes: list[LightNode], uplinks: str, status: str) -> Path:
    s = GatewaySettings(gateway_id="gw-i", site="site-i", max_records=20, max_age_s=0.2)
    text = (f'[gateway]\nid = "{s.gateway_id}"\nsite = "{s.site}"\n'
            f'data_dir = "{tmp_path / "gw-data"}"\n\n'
            + link_sections([n.path for n in nodes])
            + f"[batch]\nmax_records = {s.max_records}\nmax_age_s = {s.max_age_s}\n\n"
            + uplinks + f'[status]\nlisten = "{status}"\n')
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return path


def http_uplink(url: str, name: str, token_file: Path | None = None) -> str:
    return (f'[[uplink]]\ntype = "http"\nname = "{name}"\nurl = "{url}"\ntimeout_s = 3\n'
            "backoff_initial_s = 0.1\nbackoff_max_s = 0.5\n"
            + (f'token_file = "{token_file}"\ninsecure_credentials = true\n'  # loopback
               if token_file else "") + "\n")


async def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(cond):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


def unavailable(ing: procs.IngestProcess) -> int:
    return json.loads(get(ing.url + "/stats")[1])["unavailable"]


def rows(pg: PgCluster) -> int:
    try:
        return pg.query("SELECT count(*) FROM records")[0][0]
    except Exception:             # restarting
        return -1


async def run_fleet(nodes: list[LightNode], body) -> None:
    tasks = [asyncio.create_task(n.run()) for n in nodes]
    try:
        await body()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def assert_exactly_once(pg: PgCluster, nodes: list[LightNode]) -> None:
    got: dict[str, list[int]] = {}
    for node, seq in pg.query("SELECT node, seq FROM records ORDER BY node, seq"):
        got.setdefault(node, []).append(seq)
    want = {n.id: list(range(1, n.made_count + 1)) for n in nodes}
    assert got == want
    # every stored record counted once in the answers of the batches that stored it
    stored = pg.query("SELECT coalesce(sum((answer->>'stored')::int), 0) FROM batches")[0][0]
    assert stored == sum(len(v) for v in want.values())


async def drain(pg: PgCluster, nodes: list[LightNode], timeout: float) -> None:
    for n in nodes:
        n.produce = False
    total = sum(n.made_count for n in nodes)
    await wait_for(lambda: all(n.acked == n.made_count for n in nodes), timeout,
                   "every node's records acked by the gateway")
    await wait_for(lambda: rows(pg) == total, timeout, f"{total} rows in PostgreSQL")


def test_gateway_over_http_exactly_once_across_ingest_kill_and_postgres_restart(tmp_path, pg):
    """Two uplinks, each to its own ingest process, so every batch arrives twice (at the same
    time, often); ingest A is killed -9 mid-stream and comes back on its port; PostgreSQL
    restarts under load. Every record made is one row; each was stored by exactly one batch."""
    nodes = [LightNode(f"wl-{i:02d}", period=0.05, alarm_every=40) for i in range(3)]
    port_a = free_port()
    ing_a = procs.start_ingest(pg.url, tmp_path / "a0.log", listen=f"127.0.0.1:{port_a}")
    token = tmp_path / "site.token"              # B takes batches only with this token
    token.write_text("s3cr3t-site-token\n")
    token.chmod(0o600)
    tokens = tmp_path / "ingest.tokens"
    tokens.write_text("# site tokens\nanother-site\ns3cr3t-site-token\n")
    ing_b = procs.start_ingest(pg.url, tmp_path / "b.log", extra=["--tokens", str(tokens)])
    assert post(ing_b.url, cbor2.dumps(batch("b-x", [record("wl-9", 1)])),
                "application/cbor", "b-x")[0] == 401        # no token: refused, nothing stored
    cfg = gateway_toml(tmp_path, nodes, http_uplink(ing_a.batches_url, "a")
                       + http_uplink(ing_b.batches_url, "b", token), "127.0.0.1:0")
    gw, _status = procs.start_gateway(cfg, tmp_path / "gw.log")

    async def body() -> None:
        nonlocal ing_a
        await wait_for(lambda: rows(pg) >= 60, 30, "the first rows")
        procs.kill(ing_a.proc)                       # kill -9, perhaps mid-transaction
        n = rows(pg)
        await wait_for(lambda: rows(pg) >= n + 60, 30, "rows through ingest B alone")
        ing_a = procs.start_ingest(pg.url, tmp_path / "a1.log", listen=f"127.0.0.1:{port_a}")
        await asyncio.to_thread(pg.stop)            # fast shutdown: sessions cut
        await wait_for(lambda: unavailable(ing_b) > 0, 20, "a batch answered 503")
        await asyncio.to_thread(pg.start)
        n = rows(pg)
        await wait_for(lambda: rows(pg) >= n + 60, 30, "rows after the restart")
        await drain(pg, nodes, 40)

    try:
        asyncio.run(asyncio.wait_for(run_fleet(nodes, body), 120))
        assert_exactly_once(pg, nodes)
        stats = [json.loads(get(i.url + "/stats")[1]) for i in (ing_a, ing_b)]
        assert sum(s["duplicate_batches"] for s in stats) > 0   # the other uplink's copies
        assert stats[1]["unavailable"] > 0 and stats[1]["unauthorized"] == 1
        assert stats[1]["batches"] > 0              # the gateway's token let its batches in
        assert "503" in (tmp_path / "gw.log").read_text()    # the gateway was told to retry
        assert pg.query("SELECT count(*) FROM recent_alarms")[0][0] > 0
    finally:
        procs.stop(gw)
        procs.stop(ing_a.proc)
        procs.stop(ing_b.proc)
        for n in nodes:
            n.close()


@system.needs(MOSQUITTO, SKIP_REASON)
def test_gateway_over_mqtt_to_a_subscriber_group_exactly_once(tmp_path, pg):
    """The gateway's MQTT uplink, a real mosquitto, two ingest processes in one shared
    subscription group; one is killed -9 mid-stream and restarted with its client id (its
    unacknowledged messages come back to it)."""
    broker = Broker(tmp_path / "broker", extra="max_queued_messages 0\n")
    broker.start()
    nodes = [LightNode(f"wl-{i:02d}", period=0.05, alarm_every=30) for i in range(3)]
    mqtt_url = f"mqtt://127.0.0.1:{broker.port}"

    def member(name: str, log: str) -> procs.IngestProcess:
        ing = procs.start_ingest(pg.url, tmp_path / log, extra=[
            "--mqtt", mqtt_url, "--group", "city", "--client-id", f"ingest-{name}"])
        procs.wait_for_line(ing.log, "ingest mqtt: subscribed", ing.proc, 20)
        return ing

    ing_a, ing_b = member("a", "a0.log"), member("b", "b.log")
    uplink = (f'[[uplink]]\ntype = "mqtt"\nname = "mqtt"\nurl = "{mqtt_url}"\ntimeout_s = 3\n'
              "backoff_initial_s = 0.1\nbackoff_max_s = 0.5\n\n")
    cfg = gateway_toml(tmp_path, nodes, uplink, "127.0.0.1:0")
    gw, _status = procs.start_gateway(cfg, tmp_path / "gw.log")

    def mqtt_stat(ing: procs.IngestProcess, key: str) -> int:
        return json.loads(get(ing.url + "/stats")[1])["mqtt"][key]

    async def body() -> None:
        nonlocal ing_a
        await wait_for(lambda: rows(pg) >= 60, 30, "the first rows")
        procs.kill(ing_a.proc)
        n = rows(pg)
        await wait_for(lambda: rows(pg) >= n + 60, 30, "rows through member B alone")
        ing_a = member("a", "a1.log")
        # PostgreSQL away: the members hold the messages unacknowledged and retry
        await asyncio.to_thread(pg.stop)
        await wait_for(lambda: mqtt_stat(ing_a, "retries") + mqtt_stat(ing_b, "retries") > 0,
                       20, "a member retrying a batch")
        await asyncio.to_thread(pg.start)
        # not a batch: acknowledged, counted, one line in the log, nothing stored
        await asyncio.to_thread(publish.single, "roadside/site-i/gw-i/level", b"junk", qos=1,
                                hostname="127.0.0.1", port=broker.port)
        await wait_for(lambda: mqtt_stat(ing_a, "refused") + mqtt_stat(ing_b, "refused") == 1,
                       20, "the junk message refused")
        await drain(pg, nodes, 40)

    try:
        asyncio.run(asyncio.wait_for(run_fleet(nodes, body), 120))
        assert_exactly_once(pg, nodes)
        stats = [json.loads(get(i.url + "/stats")[1])["mqtt"] for i in (ing_a, ing_b)]
        assert stats[1]["stored_batches"] > 0
        logs = ing_a.log.read_text() + (tmp_path / "b.log").read_text()
        assert "roadside/site-i/gw-i/level: not a batch, dropped (acknowledged)" in logs
        kinds = {k for (k,) in pg.query("SELECT DISTINCT kind FROM records")}
        assert kinds == {"level", "alarm"}
        # mixed batches were split by kind: their parts are the keys
        assert pg.query("SELECT count(*) FROM batches WHERE id LIKE '%.alarm'")[0][0] > 0
    finally:
        procs.stop(gw)
        procs.stop(ing_a.proc)
        procs.stop(ing_b.proc)
        broker.stop()
        for n in nodes:
            n.close()


@pytest.fixture(autouse=True)
def _bounded():
    yield
    procs.stop_all()
