"""Updates over the air, the gateway's side (gateway/ota/), through the REAL daemon process and
session code over real ptys, against a scripted node speaking the OTA contract
(tests/support/ota_node.py): transfer, pacing while records flow, resume after a link drop and
after the daemon is killed, busy retry, refusals surfaced with their reason, canary halt,
cancel."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path
from typing import Any

from roadside.gateway import ota_bundle as ob
from roadside.tools.sim import procs
from roadside.tools.sim.gateway_toml import write
from support.cli import roadside
from support.gateway_status import link_open, status
from support.ota_node import OtaNode, api, make_bundle, tag_of

# 14 KB (two 8 KiB pieces): ~2.5 s at half of 115,200 baud.
FILES = {"roadside_node/a.mpy": bytes(range(256)) * 24, "roadside_node/b.mpy": b"b" * 5000,
         "main.py": b"import roadside_node\n" * 150}


def _config(tmp_path: Path, ports: list[str]) -> tuple[Path, str]:
    listen = f"127.0.0.1:{_free_port()}"
    cfg = write(tmp_path / "gw.toml", ports, tmp_path / "data", None, listen)
    cfg.write_text(cfg.read_text() + "\n[ota]\nretry_s = 0.3\nstall_s = 2.0\n")
    return cfg, f"http://{listen}"


def _start(cfg: Path, log: Path) -> Any:
    proc, _ = procs.start_gateway(cfg, log)
    return proc


def _chunks_after(node: OtaNode, t0: float) -> list[tuple[float, int]]:
    return [(t, off) for t, what, off in node.events if what == "OtaChunk" and t >= t0]


def test_transfer_paced_resumes_after_link_drop_and_gateway_kill(tmp_path):
    node = OtaNode("wl-0001")
    cfg, base = _config(tmp_path, [node.path])
    data = tmp_path / "data"
    bundle = make_bundle(FILES, version="1.1.0")
    proc = _start(cfg, tmp_path / "gw1.log")

    async def main() -> None:
        nonlocal proc
        await node.join(base + "/status")
        code, doc = await asyncio.to_thread(api, base, data, "/ota/rollouts", bundle,
                                            {"node": "wl-0001", "who": "test"})
        assert code == 202, doc
        assert doc["nodes"][0]["node"] == "wl-0001" and doc["tag"] == tag_of(bundle).hex()

        # Records (one of them priority) keep being ACKed promptly while chunks flow.
        await node.until(lambda: node.have > 0, "first chunk")
        t_first = time.monotonic()
        sent: list[int] = []
        priority: list[int] = []
        for i in range(12):
            if i == 6:
                priority += node.records(1, priority=True)
            else:
                sent += node.records(1)
            await asyncio.sleep(0.05)
        await node.until(lambda: node.acked >= max(sent + priority), "records acked")
        lat = [node.ack_times[s] - node.sent_times[s] for s in sent + priority]
        assert max(lat) < 1.5, lat
        assert node.ack_times[priority[0]] - node.sent_times[priority[0]] < 1.0
        # Pacing: chunks use at most half of 115,200 baud (5,760 B/s). Slack for the time
        # stamps (taken when this process reads the pty: a stall here bunches them) of 0.3 s
        # and two frames; unpaced, the whole bundle would go in a few milliseconds.
        chunks = _chunks_after(node, t_first)
        span = chunks[-1][0] - chunks[0][0]
        assert len(chunks) >= 4
        assert (len(chunks) - 1) * 512 <= 5760 * (span + 0.3) + 1100, (len(chunks), span)

        # Cable pulled for a moment: chunks are lost; the node says HELLO again and the
        # gateway resumes at the `have` it reports.
        await node.until(lambda: node.have >= 6144, "6 KB received")
        node.unplugged = True
        await asyncio.sleep(0.4)
        held = node.have
        node.unplugged = False
        t_plug = time.monotonic()
        node.hello()
        await node.until(lambda: _chunks_after(node, t_plug), "chunks after the replug")
        assert _chunks_after(node, t_plug)[0][1] == held

        # The daemon killed mid-transfer (kill -9): a new one resumes the rollout from its
        # file and the transfer from the node's `have`.
        await node.until(lambda: node.have >= 10240, "10 KB received")
        await asyncio.to_thread(procs.kill, proc)
        held = node.have
        assert held < len(ob.archive(FILES))
        proc = await asyncio.to_thread(_start, cfg, tmp_path / "gw2.log")
        await link_open(base + "/status", node.path)
        t_restart = time.monotonic()
        node.hello()
        await node.until(lambda: node.state == "done", "update done", timeout=30)
        assert _chunks_after(node, t_restart)[0][1] == held
        assert node.version == "1.1.0" and ob.unpack(bytes(node.buf)) == FILES

        async def rollout_done() -> dict[str, Any]:
            for _ in range(500):
                doc = (await asyncio.to_thread(status, base + "/status"))["ota"]
                if doc["rollouts"] and doc["rollouts"][0]["state"] == "done":
                    return doc
                await asyncio.sleep(0.02)
            raise AssertionError(f"rollout not done: {doc}")

        doc = await rollout_done()
        (r,) = doc["rollouts"]
        assert r["nodes"][0]["state"] == "done" and r["nodes"][0]["percent"] == 100.0
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert 'roadside_ota_transfers_total{outcome="done"} 1.0' in metrics
        assert 'roadside_ota_progress_ratio{node="wl-0001"} 1.0' in metrics
        # The audit row is written as the transfer ends, beside the rollout: wait for it.
        for _ in range(500):
            code, rows = await asyncio.to_thread(api, base, data, "/commands")
            update = [row for row in rows if row["name"] == "ota.update"]
            if update:
                break
            await asyncio.sleep(0.02)
        assert update and update[0]["outcome"] == "ok" and update[0]["who"] == "test"
        assert any(row["name"] == "ota.switch" and row["outcome"] == "ok" for row in rows)

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
    finally:
        procs.stop(proc)
        node.close()


def test_canary_halt_busy_retry_and_refusals_with_their_reason(tmp_path):
    a, b, c = OtaNode("wl-0001"), OtaNode("wl-0002", version="2.0.0"), OtaNode("wl-0003")
    d = OtaNode("wl-0004", board="esp32-c3")
    nodes = [a, b, c, d]
    cfg, base = _config(tmp_path, [n.path for n in nodes])
    data = tmp_path / "data"
    small = {"main.py": b"x" * 3000}
    proc = _start(cfg, tmp_path / "gw.log")

    async def wait_rollout(rid: int, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            code, doc = await asyncio.to_thread(api, base, data, f"/ota/rollouts/{rid}")
            assert code == 200, doc
            if doc["state"] != "running":
                return doc
            assert time.monotonic() < deadline, doc
            await asyncio.sleep(0.05)

    async def main() -> None:
        for n in nodes:
            await n.join(base + "/status")

        # The gateway's own check: a named node of another board fails before any OFFER.
        code, doc = await asyncio.to_thread(api, base, data, "/ota/rollouts",
                                            make_bundle(small, "1.1.0"), {"node": "wl-0004"})
        assert code == 202
        done = await wait_rollout(doc["id"])
        assert done["state"] == "halted"
        assert done["nodes"][0]["reason"].startswith("refused: board: the bundle is for boards"
                                                     " sim, wl-0004 is esp32-c3")
        assert not [e for e in d.events if e[1] == "OtaOffer"]

        # Canary a (busy once: offered again), then b (refuses: older) and c together: b's
        # refusal halts the rollout; c stops before its switch.
        a.busy = 1
        code, doc = await asyncio.to_thread(
            api, base, data, "/ota/rollouts", make_bundle(FILES, "1.1.0"),
            {"node": ["wl-0001", "wl-0002", "wl-0003"], "canary": 1})
        assert code == 202, doc
        done = await wait_rollout(doc["id"])
        states = {n["node"]: (n["state"], n["reason"]) for n in done["nodes"]}
        assert states["wl-0001"] == ("done", None)
        assert states["wl-0002"] == ("failed", "refused: version")
        assert states["wl-0003"][0] == "halted"
        assert done["state"] == "halted" and "wl-0002: refused: version" in done["reason"]
        assert a.version == "1.1.0" and c.version == "1.0.0" and c.state != "staged"
        canary = [n for n in done["nodes"] if n["node"] == "wl-0001"][0]
        assert canary["attempts"] >= 2 and canary["busy"] == 1    # busy: counted, not failed

        # A canary that rolls back halts the rollout before the rest is offered anything.
        a.trial_outcome = "import"
        offers_c = len([e for e in c.events if e[1] == "OtaOffer"])
        code, doc = await asyncio.to_thread(
            api, base, data, "/ota/rollouts", make_bundle(small, "1.2.0"),
            {"node": ["wl-0001", "wl-0003"], "canary": 1})
        done = await wait_rollout(doc["id"])
        states = {n["node"]: (n["state"], n["reason"]) for n in done["nodes"]}
        assert states["wl-0001"] == ("failed", "rolled_back: import")
        assert states["wl-0003"][0] == "halted"
        assert len([e for e in c.events if e[1] == "OtaOffer"]) == offers_c
        assert a.version == "1.1.0"

        # A node that cannot handle the OFFER (ERROR 2, e.g. out of memory): offered again,
        # and after 3 such answers the transfer fails with the node's text.
        c.error_offers = 99
        code, doc = await asyncio.to_thread(
            api, base, data, "/ota/rollouts", make_bundle(small, "1.2.0"), {"node": "wl-0003"})
        done = await wait_rollout(doc["id"])
        assert done["nodes"][0]["state"] == "failed"
        assert done["nodes"][0]["reason"] == "node error: could not handle it (MemoryError)"
        assert c.error_offers == 96

        # Bad input: one clear line.
        code, doc = await asyncio.to_thread(api, base, data, "/ota/rollouts", b"not cbor",
                                            {"node": "wl-0001"})
        assert code == 400
        assert doc["error"].startswith("bundle is not a roadside OTA bundle (not CBOR")
        code, doc = await asyncio.to_thread(api, base, data, "/ota/rollouts",
                                            make_bundle(small, "1.3.0"), {"node": "wl-0099"})
        assert code == 404 and "unknown to this gateway" in doc["error"]
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert 'roadside_ota_failures_total{reason="refused:version"} 1.0' in metrics
        assert 'roadside_ota_failures_total{reason="rolled_back:import"} 1.0' in metrics
        assert "roadside_ota_busy_total 1.0" in metrics
        assert 'roadside_ota_failures_total{reason="refused:busy"}' not in metrics

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
    finally:
        procs.stop(proc)
        for n in nodes:
            n.close()


def test_cli_push_site_with_canary_and_progress_then_status(tmp_path):
    nodes = [OtaNode("wl-0001"), OtaNode("wl-0002"), OtaNode("tl-0001", role="toll")]
    cfg, base = _config(tmp_path, [n.path for n in nodes])
    rsb = tmp_path / "app-1.1.0.rsb"
    rsb.write_bytes(make_bundle({"main.py": b"y" * 12000}, "1.1.0"))   # ~2 s: polled often
    proc = _start(cfg, tmp_path / "gw.log")

    async def main() -> None:
        for n in nodes:
            await n.join(base + "/status")
        code, out, err = await roadside(
            "ota", "push", str(rsb), "--gateway", base, "--token-file",
            str(tmp_path / "data" / "api.token"), "--site", "--canary", "1", timeout=60)
        assert code == 0, err
        lines = err.splitlines()
        assert lines[0] == "rollout 1: app 1.1.0 to 3 nodes (canary 1)"
        # Without a terminal: a line per stage and per quarter of the transfer, per node.
        quarters = [line.split()[2] for line in lines
                    if line.split()[:2] == ["wl-0001", "receiving"] and len(line.split()) == 3]
        assert len(quarters) >= 2 and set(quarters) <= {"0%", "25%", "50%", "75%"}, err
        assert any(line.split() == ["wl-0002", "ok", "1.1.0"] for line in lines), err
        # The site rollout skips the node the bundle is not for (the gateway's check).
        assert any(line.startswith("tl-0001") and "skipped: role" in line for line in lines)
        assert lines[-1] == "rollout 1 done: 3 nodes run 1.1.0"
        assert [n.version for n in nodes] == ["1.1.0", "1.1.0", "1.0.0"]
        # The canary (the first node the bundle is for) ran the new version before the rest
        # was offered anything: its HELLO after the switch came before wl-0002's OFFER.
        offer_2 = min(t for t, what, _ in nodes[1].events if what == "OtaOffer")
        switched = min(t for t, what, _ in nodes[0].events if what == "Command")
        assert offer_2 > switched
        code, out, err = await roadside("ota", "status", "--config", str(cfg))
        assert code == 0, err
        assert out.splitlines()[0] == "rollout 1: app 1.1.0 done"
        assert "wl-0002      done       100.0%" in out
        # Bad input: one line, exit 2.
        code, _, err = await roadside("ota", "push", str(tmp_path / "missing.rsb"), "--config",
                                      str(cfg), "--site")
        assert code != 0 and "missing.rsb: No such file or directory" in err

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
    finally:
        procs.stop(proc)
        for n in nodes:
            n.close()


def test_cancel_stops_nodes_not_yet_switched_and_keeps_the_switched(tmp_path):
    a, b, c = OtaNode("wl-0001"), OtaNode("wl-0002"), OtaNode("wl-0003")
    nodes = [a, b, c]
    cfg, base = _config(tmp_path, [n.path for n in nodes])
    data = tmp_path / "data"
    bundle = make_bundle(FILES, "1.1.0")
    proc = _start(cfg, tmp_path / "gw.log")
    gw = ["--gateway", base, "--token-file", str(data / "api.token")]

    def chunks(n: OtaNode) -> int:
        return len([e for e in n.events if e[1] == "OtaChunk"])

    async def main() -> None:
        for n in nodes:
            await n.join(base + "/status")
        code, doc = await asyncio.to_thread(api, base, data, "/ota/rollouts", bundle,
                                            {"node": ["wl-0001", "wl-0002", "wl-0003"],
                                             "canary": 1, "who": "test"})
        assert code == 202, doc
        rid = doc["id"]
        # The canary runs the new version; the rest receive: cancel (the one running).
        await b.until(lambda: b.have >= 1024, "the rest receiving", timeout=30)
        code, out, err = await roadside("ota", "cancel", *gw)
        assert code == 0, err
        assert out.startswith(f"rollout {rid} cancelled: 2 nodes stopped; wl-0001 switched"
                              f" already (they keep 1.1.0)"), out
        code, doc = await asyncio.to_thread(api, base, data, f"/ota/rollouts/{rid}")
        held = {n.node: (n.have, chunks(n)) for n in (b, c)}   # chunks in flight arrived
        assert doc["state"] == "cancelled" and doc["reason"].startswith("cancelled by "), doc
        states = {n["node"]: n["state"] for n in doc["nodes"]}
        assert states == {"wl-0001": "done", "wl-0002": "cancelled", "wl-0003": "cancelled"}
        assert a.version == "1.1.0" and b.version == c.version == "1.0.0"
        assert b.state == c.state == "receiving" and b.have < len(ob.archive(FILES))

        # Cancelling again, or a rollout that ended: one line, exit 2.
        code, _, err = await roadside("ota", "cancel", *gw)
        assert code == 2 and "no rollout is running on this gateway" in err, err
        code, _, err = await roadside("ota", "cancel", *gw, str(rid))
        assert code == 2 and f"rollout {rid} is cancelled already" in err, err
        code, _, err = await roadside("ota", "cancel", *gw, "99")
        assert code == 2 and "no rollout 99 on this gateway (HTTP 404)" in err, err

        # Where it shows: /status, the metrics, the audit log (a row per stopped node).
        doc = (await asyncio.to_thread(status, base + "/status"))["ota"]
        assert doc["rollouts"][0]["state"] == "cancelled"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert 'roadside_ota_transfers_total{outcome="cancelled"} 2.0' in metrics
        for _ in range(500):
            code, rows = await asyncio.to_thread(api, base, data, "/commands")
            stopped = {r["node"]: r["outcome"] for r in rows if r["name"] == "ota.update"}
            if len(stopped) == 3:
                break
            await asyncio.sleep(0.02)
        assert stopped == {"wl-0001": "ok", "wl-0002": "cancelled", "wl-0003": "cancelled"}

        # No chunk went out after the cancel (in all that time a transfer would have sent ~10
        # a second), and the same bundle pushed again resumes where the node stopped.
        assert {n.node: (n.have, chunks(n)) for n in (b, c)} == held
        t_again = time.monotonic()
        code, doc = await asyncio.to_thread(api, base, data, "/ota/rollouts", bundle,
                                            {"node": ["wl-0002"], "canary": 0})
        assert code == 202, doc
        await b.until(lambda: b.state == "done", "the same bundle again", timeout=30)
        assert _chunks_after(b, t_again)[0][1] == held["wl-0002"][0]

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
    finally:
        procs.stop(proc)
        for n in nodes:
            n.close()


def test_pacing_follows_the_links_byte_rate(tmp_path):
    """A serial link at 38,400 baud carries 3,840 B/s: with the whole link to OTA
    (link_share 1.0) the chunks come no faster than that, three times slower than the
    115,200 baud a link of unknown rate is paced as."""
    from roadside.tools.sim.gateway_toml import GatewaySettings

    node = OtaNode("wl-0001")
    listen = f"127.0.0.1:{_free_port()}"
    cfg = write(tmp_path / "gw.toml", [node.path], tmp_path / "data", None, listen,
                GatewaySettings(baudrate=38400))
    cfg.write_text(cfg.read_text() + "\n[ota]\nlink_share = 1.0\nstall_s = 2.0\n")
    base = f"http://{listen}"
    files = {"main.py": bytes(range(256)) * 24}       # 6 KB: 12 chunks, ~1.7 s at 3,840 B/s
    proc = _start(cfg, tmp_path / "gw.log")

    async def main() -> None:
        await node.join(base + "/status")
        (link,) = (await asyncio.to_thread(status, base + "/status"))["links"]
        assert link["byte_rate"] == 3840.0, link
        code, doc = await asyncio.to_thread(api, base, tmp_path / "data", "/ota/rollouts",
                                            make_bundle(files, "1.1.0"), {"node": "wl-0001"})
        assert code == 202, doc
        await node.until(lambda: node.state == "done", "update done", timeout=30)
        chunks = _chunks_after(node, 0.0)
        frame = len(p_frame(node, 0))
        span = chunks[-1][0] - chunks[0][0]
        # Each chunk no earlier than one frame's time at 3,840 B/s after the one before; the
        # first one's time stamp may be late (this process reading the pty): 0.3 s slack.
        assert span >= (len(chunks) - 1) * frame / 3840 - 0.3, (len(chunks), span)
        assert span < (len(chunks) - 1) * frame / 3840 * 3 + 2, (len(chunks), span)

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        procs.stop(proc)
        node.close()


def p_frame(node: OtaNode, offset: int) -> bytes:
    """The OTA_CHUNK frame at `offset` of what the node staged, as the gateway sent it."""
    from roadside.gateway import protocol as p

    assert node.tag is not None
    return p.encode_frame(p.OtaChunk(node.tag, offset, bytes(node.buf[offset:offset + 512])))


def test_a_ble_links_byte_rate_from_its_mtu_and_measured_writes():
    """BleLink.byte_rate: one write of MTU - 3 bytes per 50 ms connection interval, lowered to
    the rate its writes measured (when the stack held frames back) once 4 KiB were timed."""
    from roadside.gateway.links.ble import BleCentral, BleLink

    link = BleLink("wl-0001", bytes(32), BleCentral())
    assert link.byte_rate == 20 / 0.05                 # before the MTU exchange: ATT's 23
    link.session.mtu = 247
    assert link.byte_rate == 244 / 0.05                # 4,880 B/s
    link.timed_write(2048, 1.0)                        # too little to go by
    assert link.byte_rate == 244 / 0.05
    link.timed_write(2048, 1.0)                        # 4 KiB at 2,048 B/s: slower, taken
    assert link.byte_rate == 2048.0
    link.timed_write(40960, 1.0)                       # faster than the estimate: not taken
    assert link.byte_rate == 244 / 0.05
    assert link.timed_bytes == 32768                   # the window keeps the newest


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


