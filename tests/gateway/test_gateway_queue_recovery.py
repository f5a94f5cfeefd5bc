"""A damaged queue file (truncated, random bytes, a page garbled mid-file): found at open and by
`roadside gateway check`, moved aside (kept), every readable record re-queued with its
(node, seq), counted on /metrics and /healthz; the daemon starts instead of crash-looping."""

from __future__ import annotations

import json
import random
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from roadside.gateway import queue_recovery
from roadside.gateway.health import Health
from roadside.gateway.metrics import GatewayCollector
from roadside.gateway.protocol import Record
from roadside.gateway.queue import Queue
from roadside.tools.cli import main
from roadside.tools.sim import procs
from roadside.tools.sim.gateway_toml import write

NODES = ("wl-0001", "wl-0002", "wl-0003")
KINDS = ("truncated", "random", "garbled")


def build(path: Path) -> set[tuple[str, int]]:
    """A queue file of 3 x 1000 records and one cut batch, checkpointed into the file."""
    q = Queue(path)
    for node in NODES:
        for lo in range(1, 1001, 100):
            q.store(node, "water", [Record(s, 1_700_000_000 + s, 1, 0,
                                           {1: 10.5, 3: 900 + s, 4: "x" * 40})
                                    for s in range(lo, lo + 100)])
    assert q.next_batch(50, 1 << 20) is not None
    q._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    q.close()
    return {(n, s) for n in NODES for s in range(1, 1001)}


def damage(path: Path, kind: str) -> None:
    data = bytearray(path.read_bytes())
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(random.Random(1).randbytes(len(data)))
    else:
        mid = len(data) // 2 // 4096 * 4096
        data[mid: mid + 4096] = random.Random(2).randbytes(4096)
        path.write_bytes(data)


def point_readable(path: Path) -> set[tuple[str, int]]:
    """The oracle: every (node, seq) a lookup of its own can still read from the file."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        db.execute("PRAGMA writable_schema = ON")
    except sqlite3.Error:
        return set()
    out = set()
    for rowid in range(1, 3001):
        try:
            row = db.execute("SELECT node, lo, hi FROM runs WHERE rowid = ?",
                             (rowid,)).fetchone()
            if row:
                out.update((row[0], s) for s in range(row[1], row[2] + 1))
        except sqlite3.DatabaseError:
            pass
    db.close()
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_queue_is_moved_aside_and_every_readable_record_requeued(tmp_path, kind):
    path = tmp_path / "queue.sqlite"
    stored = build(path)
    damage(path, kind)
    assert queue_recovery.integrity(path) is not None
    q = queue_recovery.open_queue(path, "gw", "site")
    try:
        (aside,) = tmp_path.glob("queue.sqlite.damaged-*[0-9]Z")
        readable = point_readable(aside)
        got = {(node, seq) for node, seq, _, _ in q.stored()}
        assert got == readable and got <= stored        # nothing readable is lost
        if kind == "random":
            assert got == set()
        else:
            assert len(got) > 1000, len(got)
            # The nodes' ACKs came along: the nodes are not asked again for what they dropped.
            assert {n: q.ack_of(n) for n in NODES} == dict.fromkeys(NODES, 1000)
        (report,) = q.storage.recovered
        assert report["aside"] == str(aside) and report["records"] == len(got)
        assert q.counters["recovered_files"] == 1
        assert q.counters["recovered_records"] == len(got)
        assert queue_recovery.integrity(path) is None
        ok, doc = Health([], [], q).check()
        assert not ok and doc["reason"].startswith("queue file was damaged at start: moved"
                                                   f" aside to {aside}")

        class St:
            queue = q
        metrics = {m.name: m.samples[0].value for m in GatewayCollector(St())._queue(q)}
        assert metrics["roadside_queue_recovered_files"] == 1
    finally:
        q.close()
    # Opened again: sound, nothing recovered twice, the count kept.
    q = queue_recovery.open_queue(path, "gw", "site")
    try:
        assert not q.storage.recovered and q.counters["recovered_files"] == 1
    finally:
        q.close()


def check(tmp_path: Path, capsys, max_bytes: int | None = None) -> tuple[int, str, str]:
    cfg = tmp_path / "gateway.toml"
    extra = f"[queue]\nmax_bytes = {max_bytes}\n" if max_bytes else ""
    cfg.write_text(f'[gateway]\nid = "gw-1"\nsite = "s"\ndata_dir = "{tmp_path / "data"}"\n'
                   + extra)
    code = main(["gateway", "check", "--config", str(cfg)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("kind", KINDS)
def test_gateway_check_names_the_damaged_file_and_what_to_do(tmp_path, capsys, kind):
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "queue.sqlite"
    build(path)
    code, out, err = check(tmp_path, capsys)
    assert code == 0 and "OK" in out and err == ""
    damage(path, kind)
    before = path.read_bytes()
    code, out, err = check(tmp_path, capsys)
    # Exit 0: it is systemd's ExecStartPre, and the daemon recovers the file at start.
    assert code == 0 and "OK, but the queue file is damaged" in out and err == ""
    (line,) = [ln for ln in out.splitlines() if ln.startswith("warning: ")]
    assert line.startswith(f"warning: queue {path} is damaged (")
    assert "moves it aside" in line and "re-queues every readable record" in line
    assert path.read_bytes() == before               # check never touches the file


def test_gateway_check_warns_when_max_bytes_exceeds_the_disk(tmp_path, capsys):
    code, out, err = check(tmp_path, capsys, max_bytes=1 << 40)   # 1 TiB
    assert code == 0 and "OK" in out and err == ""
    (line,) = [ln for ln in out.splitlines() if ln.startswith("warning: ")]
    assert line.startswith("warning: queue.max_bytes = 1099511627776"
                           " needs about")
    assert "set [queue] max_bytes to at most" in line


def test_daemon_starts_on_a_garbled_queue_and_says_so(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    build(data / "queue.sqlite")
    damage(data / "queue.sqlite", "garbled")
    cfg = write(tmp_path / "gw.toml", [str(tmp_path / "ttyUSB-nope")], data,
                "http://127.0.0.1:9/batches", "127.0.0.1:0")
    log = tmp_path / "gw.log"
    proc, url = procs.start_gateway(cfg, log)
    try:
        procs.wait_for_line(log, r"queue \S+ is damaged \(database disk image is malformed\):"
                                 r" moving it aside to \S+damaged-\S+", proc, 5)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url.replace("/status", "/healthz"), timeout=5)
        assert err.value.code == 503
        doc = json.loads(err.value.read())
        assert doc["reason"].startswith("queue file was damaged at start")
        with urllib.request.urlopen(url, timeout=5) as resp:
            st = json.loads(resp.read())
        assert st["queue"]["depth"] > 2000 and st["queue"]["storage"]["recovered"]
        assert proc.poll() is None
    finally:
        procs.stop(proc)
    assert "Traceback" not in log.read_text()
