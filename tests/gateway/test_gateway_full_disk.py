"""The real daemon with its queue on a real 2 MiB tmpfs that fills up (issue 12): it must not
exit, /healthz says why it is 503, bookkeeping that cannot commit is retried, and once space
is freed everything goes out exactly once, /healthz is 200 again and the log says so once.

The tmpfs is mounted in a user + mount namespace (`unshare -rm`: no root needed where
unprivileged user namespaces are allowed); the test skips where that is not possible. The
daemon shares the test's network and /dev/pts, so the fake node (a pty) and the backend (HTTP
on loopback, in this process) are the usual ones. Two files outside the tmpfs trigger filling
the volume (`cat /dev/zero > filler` until ENOSPC) and freeing it (rm filler), run by shell
loops inside the namespace.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cbor2
import pytest
from roadside.gateway import protocol as p
from roadside.tools.sim import procs


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    target = tmp_path / "probe"
    target.mkdir()
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c",
                               f"mount -t tmpfs -o size=1m tmpfs {target}"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Backend:
    """HTTP on loopback: answers `status` (503 = down, 200), keeps every 2xx'd batch."""

    def __init__(self) -> None:
        self.status = 503
        self.batches: dict[str, list[tuple[str, int]]] = {}   # batch id -> (node, seq)
        self.posts = 0
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                backend.posts += 1
                code = backend.status
                if code == 200:
                    doc = cbor2.loads(body)
                    backend.batches[self.headers["Idempotency-Key"]] = [
                        (r["node"], r["seq"]) for r in doc["records"]]
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/batches"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_full_disk_never_stops_the_daemon_and_nothing_is_lost(tmp_path, fake_node):
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs in a user namespace here (unshare -rm)")
    vol = tmp_path / "vol"
    vol.mkdir()
    fill, filled, free = tmp_path / "fill", tmp_path / "filled", tmp_path / "free"
    backend = Backend()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f'[gateway]\nid = "gw-1"\nsite = "s"\ndata_dir = "{vol}"\n\n'
        f'[[link]]\ntype = "serial"\nport = "{fake_node.path}"\nbaudrate = 115200\n\n'
        f"[batch]\nmax_records = 20\nmax_age_s = 0.2\n\n"
        f'[[uplink]]\ntype = "http"\nurl = "{backend.url}"\nbackoff_initial_s = 0.05\n'
        f"backoff_max_s = 0.3\n\n"
        f'[status]\nlisten = "127.0.0.1:0"\n')
    script = (
        f"mount -t tmpfs -o size=2m tmpfs {vol} || exit 97\n"
        f"(while [ ! -e {fill} ]; do sleep 0.05; done;"
        f" cat /dev/zero > {vol}/filler 2>/dev/null; touch {filled}) &\n"
        f"(while [ ! -e {free} ]; do sleep 0.05; done; rm -f {vol}/filler) &\n"
        f"exec {sys.executable} -m roadside.gateway.daemon --config {cfg}\n")
    log = tmp_path / "gw.log"
    proc = procs.spawn(["unshare", "-rm", "sh", "-c", script], log)
    acked: list[int] = []

    async def scenario(url: str) -> None:
        healthz = url.replace("/status", "/healthz")
        for _ in range(200):
            if json.loads(get(url)[1])["links"][0]["state"] == "open":
                break
            await asyncio.sleep(0.05)
        fake_node.hello("wl-0001")
        await fake_node.expect(p.Ack, seq=0, timeout=10)
        # The backend is down: records wait in the queue (batches cut, retried).
        for lo in range(1, 201, 10):
            fake_node.records(list(range(lo, lo + 10)))
            await fake_node.expect(p.Ack, seq=lo + 9, timeout=10)
            acked.extend(range(lo, lo + 10))
        fill.touch()
        while not filled.exists():
            await asyncio.sleep(0.05)
        # The volume is full: the node is told busy (it keeps its journal), /healthz is 503.
        seq = 201
        busy = False
        for _ in range(100):
            fake_node.records(list(range(seq, seq + 10)))
            while True:
                msg = await fake_node.expect(p.Message, timeout=10)
                if isinstance(msg, p.Error | p.Ack):
                    break
            if isinstance(msg, p.Error):
                assert msg.code == p.ERR_BUSY
                busy = True
                break
            acked.extend(range(seq, seq + 10))
            seq += 10
        assert busy, "the node was never told busy on a full disk"
        code, body = get(healthz)
        assert code == 503, body
        reason = json.loads(body)["reason"]
        assert reason.startswith(("queue disk full", "queue in backpressure")), reason
        assert json.loads(get(url)[1])["queue"]["backpressure"] is True
        # The backend comes back: 2xx while the disk is still full.
        backend.status = 200
        for _ in range(200):
            if backend.batches:
                break
            await asyncio.sleep(0.05)
        assert backend.batches
        for _ in range(10):                   # the bookkeeping may fail meanwhile: still up
            await asyncio.sleep(0.1)
            assert proc.poll() is None, log.read_text()[-3000:]
        free.touch()
        # Space again: everything goes out, the node's busy records are taken, 200 again.
        for _ in range(300):
            fake_node.records(list(range(seq, seq + 10)))
            msg = await fake_node.expect(p.Ack | p.Error, timeout=10)
            if isinstance(msg, p.Ack) and msg.seq == seq + 9:
                acked.extend(range(seq, seq + 10))
                break
            await asyncio.sleep(0.1)
        for _ in range(300):
            st = json.loads(get(url)[1])
            if st["queue"]["depth"] == 0 and get(healthz)[0] == 200:
                break
            await asyncio.sleep(0.1)
        assert st["queue"]["depth"] == 0, st
        assert get(healthz) == (200, "ok")

    try:
        m = procs.wait_for_line(log, r"status on (http://\S+)", proc, 20)
        asyncio.run(asyncio.wait_for(scenario(m.group(1)), 90))
        assert proc.poll() is None
        procs.stop(proc)
        assert proc.returncode == 0, log.read_text()[-3000:]
    finally:
        procs.stop(proc)
        backend.close()
    got = [key for keys in backend.batches.values() for key in keys]
    assert sorted(got) == [("wl-0001", s) for s in acked]       # each ACKed record once
    text = log.read_text()
    assert "Traceback" not in text
    assert text.count("healthy again") == 1
    # One line when the storage error began and one when it ended, not one a second.
    assert text.count("queue storage error") <= 1, text
    assert text.count("queue storage works again") == text.count("queue storage error")
    assert text.count("no longer answering busy") == 1
