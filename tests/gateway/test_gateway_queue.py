"""The SQLite queue: duplicates, contiguity and the `from` rule, batches, crash safety."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import cbor2
from roadside.gateway.errors import QueueFullError
from roadside.gateway.protocol import FLAG_CLOCK_UNSYNCED, FLAG_PRIORITY, Record
from roadside.gateway.queue import Queue


def rec(seq: int, flags: int = 0, kind: int = 1) -> Record:
    return Record(seq, 1_700_000_000 + seq, kind, flags, {1: 10.5, 3: 900 + seq})


def recs(*seqs: int) -> list[Record]:
    return [rec(s) for s in seqs]


def test_duplicates_dropped_and_counted(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    assert q.store("a", "water", recs(1, 2, 3), 1) == (3, 0, 3, 0)
    r = q.store("a", "water", recs(2, 3, 4), 2)
    assert (r.stored, r.duplicates, r.ack) == (1, 2, 4)
    r = q.store("a", "water", recs(5, 5), 5)      # twice in one message
    assert (r.stored, r.duplicates, r.ack) == (1, 1, 5)
    assert q.counters["duplicates"] == 3 and q.nodes["a"].duplicates == 3
    assert q.depth() == 5


def test_ack_stops_at_a_gap_and_advances_when_it_fills(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    assert q.store("a", "water", recs(1, 2, 4, 5), 1).ack == 2
    assert q.store("a", "water", recs(3), 3).ack == 5
    assert q.store("b", "water", recs(2), 1).ack == 0   # seq 1 still expected
    assert q.ack_of("b") == 0 and q.ack_of("nobody") == 0


def test_from_rule_gives_up_missing_records_and_counts_the_gap(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    q.store("a", "water", recs(1, 2, 5), 1)
    r = q.store("a", "water", recs(7), 7)           # 3, 4, 6 are gone for good; 5 is held
    assert (r.ack, r.gaps) == (7, 3)
    assert q.counters["gaps"] == 3 and q.nodes["a"].gaps == 3
    r = q.hello("a", "water", 12)                   # empty journal: next seq 12
    assert (r.ack, r.gaps) == (11, 4)
    assert q.store("a", "water", recs(4), 12).duplicates == 1   # a late arrival is not stored


def test_unsynced_records_get_the_gateway_time(tmp_path):
    q = Queue(tmp_path / "q.sqlite", "gw-1", "site-1")
    q.store("a", "water", [rec(1, FLAG_CLOCK_UNSYNCED), rec(2, FLAG_PRIORITY, kind=2)], 1,
            now=1_800_000_000.7)
    b = q.next_batch(10, 65536, now=1_800_000_001)
    body = cbor2.loads(b.body)
    assert body["batch"] == b.id and body["gateway"] == "gw-1" and body["site"] == "site-1"
    assert body["created"] == 1_800_000_001
    r1, r2 = body["records"]
    assert (r1["t"], r1["synced"], r1["priority"], r1["kind"]) == (1_800_000_000, False, False,
                                                                   "level")
    assert r1["data"] == {"level_cm": 10.5, "distance_mm": 901}
    assert (r2["t"], r2["synced"], r2["priority"], r2["kind"]) == (1_700_000_002, True, True,
                                                                   "alarm")


def test_batches_keep_each_node_in_seq_order_and_wait_for_gaps(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    q.store("a", "water", recs(1, 2), 1, now=100)
    q.store("b", "water", recs(1, 2, 3), 1, now=101)
    q.store("a", "water", recs(5), 3, now=102)        # beyond a gap: not batched yet
    b1 = q.next_batch(3, 1 << 20)
    assert b1.keys == (("a", 1), ("a", 2), ("b", 1))
    q.store("a", "water", recs(3, 4), 3, now=103)     # fills the gap: 3, 4, 5 now eligible
    b2 = q.next_batch(100, 1 << 20)
    assert b2.keys == (("b", 2), ("b", 3), ("a", 3), ("a", 4), ("a", 5))
    assert q.next_batch(100, 1 << 20) is None
    assert [b.id for b in q.pending_batches()] == [b1.id, b2.id]
    assert q.batches_pending() == 2 and q.depth() == 8


def test_max_bytes_cuts_smaller_batches(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    q.store("a", "water", recs(*range(1, 51)), 1)
    b = q.next_batch(1000, 1024)
    assert 1 < len(b) < 50 and len(b.body) <= 1024
    assert b.keys[0] == ("a", 1)


def test_pending_batch_is_the_same_after_reopening(tmp_path):
    path = tmp_path / "q.sqlite"
    q = Queue(path, "gw", "s")
    q.store("a", "water", recs(1, 2, 3), 1)
    b = q.next_batch(100, 1 << 20)
    q.close()
    q = Queue(path, "gw", "s")
    (again,) = q.pending_batches()
    assert (again.id, again.keys, again.body) == (b.id, b.keys, b.body)
    assert q.next_pending("http") == again
    assert q.batch_delivered(b.id, "http", ["http"])
    assert q.depth() == 0 and q.batches_pending() == 0 and q.counters["delivered_records"] == 3
    # Delivered and deleted, yet still known: a resend is a duplicate, not a new record.
    assert q.store("a", "water", recs(2, 3), 2).duplicates == 2
    q.close()
    assert Queue(path).ack_of("a") == 3


def test_a_batch_waits_for_every_uplink(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    q.store("a", "water", recs(1), 1)
    b = q.next_batch(10, 1 << 20)
    assert not q.batch_delivered(b.id, "one", ["one", "two"])
    assert q.next_pending("one") is None and q.next_pending("two").id == b.id
    assert q.batch_delivered(b.id, "two", ["one", "two"])
    assert q.depth() == 0


def test_dead_letter_moves_the_batch_aside(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    q.store("a", "water", recs(1, 2), 1)
    b = q.next_batch(10, 1 << 20)
    q.dead_letter(b.id, "http", "HTTP 400: bad")
    assert q.depth() == 0 and q.batches_pending() == 0 and q.counters["dead_letters"] == 1
    row = q._db.execute("SELECT reason, body FROM dead_letters").fetchone()
    assert row == ("HTTP 400: bad", b.body)


WRITER = textwrap.dedent("""
    import sys
    from roadside.gateway.protocol import Record
    from roadside.gateway.queue import Queue
    q = Queue(sys.argv[1])
    seq = q.ack_of("n") + 1
    while True:
        r = q.store("n", "water", [Record(s, s, 1, 0, {1: 1.0, 3: s})
                                   for s in range(seq, seq + 20)], seq)
        seq += 20
        if seq % 200 == 1:
            q.next_batch(50, 1 << 20)
        print(r.ack, flush=True)   # what an ACK would promise
""")


def test_every_acked_record_survives_kill_9_mid_write(tmp_path):
    path = tmp_path / "q.sqlite"
    for _round in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        acked = 0
        for _ in range(25 + 17 * _round):
            line = proc.stdout.readline()
            assert line, "the writer died"
            acked = int(line)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        proc.stdout.close()
        q = Queue(path)
        assert q.ack_of("n") >= acked
        held = {seq for _, seq, _, _ in q.stored("n")}
        assert set(range(1, acked + 1)) <= held
        # Batches cut before the kill still hold exactly their records, in order.
        for b in q.pending_batches():
            seqs = [s for _, s in b.keys]
            assert seqs == sorted(seqs) and [r["seq"] for r in cbor2.loads(b.body)["records"]] \
                == seqs
        assert q._db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        q.close()


def _reference(q: Queue) -> tuple[int, int, float | None, list[tuple[str, int]]]:
    """What waiting() and the next batch's order must be, from the file alone: per node the
    records above its last cut (the pending batches' keys) up to its ACK, ordered by the
    running max of their receive times (ties by node, then seq)."""
    cut: dict[str, int] = {}
    for b in q.pending_batches():
        for node, seq in b.keys:
            cut[node] = max(cut.get(node, 0), seq)
    merged = []
    count = size = 0
    oldest = None
    for node in q.nodes:
        eff = None
        for _, seq, received, rec in q.stored(node, cut.get(node, 0), q.ack_of(node)):
            eff = received if eff is None else max(eff, received)
            merged.append((eff, node, seq))
            count += 1
            size += len(rec)
            oldest = received if oldest is None else min(oldest, received)
    return count, size, oldest, [(n, s) for _, n, s in sorted(merged)]


def test_batches_follow_the_file_through_gaps_evictions_priority_and_reopening(tmp_path):
    """Cutting works from in-memory segments; a long random run against a reference computed
    from the file: the same waiting count, bytes and oldest, batches in the same order."""
    import random

    rng = random.Random(7)
    path = tmp_path / "q.sqlite"
    q = Queue(path, max_bytes=12_000)
    sent = {n: 0 for n in "abcd"}
    now = 1000.0
    full = 0
    for step in range(400):
        now += rng.choice((0.0, 0.5, 1.0, -0.7))     # clocks step back, too
        node = rng.choice("abcd")
        op = rng.random()
        if op < 0.55:
            first = sent[node] + 1
            seqs = list(range(first, first + rng.randint(1, 6)))
            if rng.random() < 0.2:
                seqs = seqs[1:] or seqs              # a record lost in transit: a gap
            if rng.random() < 0.1:
                seqs += seqs[:1]                     # twice in one message
            rng.shuffle(seqs)
            sent[node] = max(sent[node], *seqs)
            from_seq = q.ack_of(node) + 1
            if rng.random() < 0.1:
                from_seq = min(seqs)                 # the node gave up what it lacks
            flags = FLAG_PRIORITY if rng.random() < 0.05 else 0
            before = (q.waiting(), q.ack_of(node), dict(q.counters))
            try:
                q.store(node, "water", [rec(s, flags) for s in seqs], from_seq, now=now)
            except QueueFullError:   # backpressure (ERROR 6): allowed, and stores nothing
                full += 1
                assert (q.waiting(), q.ack_of(node), dict(q.counters)) == before, step
        elif op < 0.75:
            b = q.next_batch(rng.randint(1, 30), rng.choice((400, 1 << 20)), now=now)
            if b is not None:
                assert [(r["node"], r["seq"]) for r in cbor2.loads(b.body)["records"]] \
                    == list(b.keys)
        elif op < 0.8:
            if q.priority_waiting():
                q.next_priority_batch(50, 1 << 20, now=now)
        elif op < 0.95:
            pending = q.pending_batches()
            if pending:
                q.batch_delivered(pending[0].id, "http", ["http"])
        else:
            q.close()
            q = Queue(path, max_bytes=12_000)
        count, size, oldest, order = _reference(q)
        assert q.waiting() == (count, size, oldest), step
        _check_runs(q, step)
        b = q._candidates(10_000)
        assert [(pc.node, s) for pc in b for s in range(pc.lo, pc.hi + 1)] == order, step
    assert q.counters["evicted"] > 0 and q.counters["delivered_records"] > 0
    assert q.counters["gaps"] > 0 and q.counters["duplicates"] > 0
    assert full > 0     # the run did meet backpressure
    q.close()


def _check_runs(q: Queue, step: int) -> None:
    """Layout 3's rows against the queue's counts: runs of contiguous seqs that do not
    overlap, each record's map where its offsets say, sizes and priority marks that add up."""
    from roadside.gateway.queue import runs

    total = size = 0
    last: dict[str, int] = {}
    for row in q._db.execute("SELECT node, lo, hi, pri, received, size, recs, meta FROM runs"
                             " ORDER BY node, lo"):
        run = runs.Run(*row[:7], runs.unpack_meta(row[7]))
        assert run.lo <= run.hi and run.lo > last.get(run.node, 0), step
        last[run.node] = run.hi
        assert len(run.meta) == 3 * (run.hi - run.lo + 1) and run.end(run.hi) == len(run.recs)
        recs = list(run.records(run.lo, run.hi))
        assert [cbor2.loads(r[3])["seq"] for r in recs] == list(range(run.lo, run.hi + 1))
        assert sum(r[1] for r in recs) == run.size, step
        assert run.pri == max([r[0] for r in recs if r[2] & FLAG_PRIORITY], default=0), step
        total += run.hi - run.lo + 1
        size += run.size
    bodies = sum(len(b.body) for b in q.pending_batches())
    assert (q.depth(), q.bytes()) == (total, size + bodies), step


V2_SCHEMA = """
CREATE TABLE records (node TEXT NOT NULL, seq INTEGER NOT NULL, flags INTEGER NOT NULL,
    received REAL NOT NULL, size INTEGER NOT NULL, rec BLOB NOT NULL,
    PRIMARY KEY (node, seq)) WITHOUT ROWID;
CREATE INDEX records_evict ON records (received) WHERE flags & 2 = 0;
CREATE TABLE nodes (node TEXT PRIMARY KEY, ack INTEGER NOT NULL, role TEXT NOT NULL,
    stored INTEGER NOT NULL, duplicates INTEGER NOT NULL, gaps INTEGER NOT NULL,
    last_seen REAL NOT NULL);
CREATE TABLE batches (id TEXT PRIMARY KEY, created INTEGER NOT NULL, records INTEGER NOT NULL,
    body BLOB NOT NULL, keys BLOB NOT NULL, size INTEGER NOT NULL);
CREATE TABLE deliveries (batch TEXT NOT NULL, uplink TEXT NOT NULL, PRIMARY KEY (batch, uplink));
CREATE TABLE dead_letters (id TEXT NOT NULL, created INTEGER NOT NULL, failed REAL NOT NULL,
    uplink TEXT NOT NULL, reason TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (id, uplink));
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
PRAGMA user_version = 2;
"""


def test_a_queue_file_of_layout_2_is_converted_to_runs(tmp_path):
    """A queue written by the gateway before runs (layout 2, one row per record): its records
    (a pending batch's, waiting ones, one beyond a gap) come out as the same maps."""
    import sqlite3

    from roadside.gateway.uplink_wire import RecordEncoder

    path = tmp_path / "q.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V2_SCHEMA)
    enc = RecordEncoder()
    records = [rec(s, FLAG_PRIORITY if s == 3 else 0) for s in (1, 2, 3, 4, 5, 7)]
    rows = [("a", seq, flags, 100.0 + (seq > 2), length + 50, m) for seq, flags, length, m in
            enc.records("a", "water", records, 0, 100.0)]
    db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.execute("INSERT INTO nodes VALUES ('a', 5, 'water', 6, 0, 0, 101.0)")
    old_body = b"\xa1" + cbor2.dumps("old batch bytes")
    db.execute("INSERT INTO batches VALUES ('b-1', 1700, 2, ?, ?, ?)",
               (old_body, cbor2.dumps([["a", 1], ["a", 2]]), rows[0][4] + rows[1][4]))
    db.commit()
    db.close()
    q = Queue(path, "gw", "s")
    assert [(n, s, r, m) for n, s, r, m in q.stored()] == [
        ("a", s, 100.0 + (s > 2), m) for (_, s, _, _, _, m) in rows]
    assert q.depth() == 6 and q.ack_of("a") == 5 and q.highest_seq("a") == 7
    assert q.waiting()[0] == 3 and q.priority_waiting()
    assert q.bytes() == sum(r[4] for r in rows) + len(old_body)
    _check_runs(q, 0)
    b2 = q.next_batch(10, 1 << 20, now=2000)
    assert b2.keys == (("a", 3), ("a", 4), ("a", 5))
    assert cbor2.loads(b2.body)["records"] == [cbor2.loads(r[5]) for r in rows[2:5]]
    assert q.batch_delivered("b-1", "http", ["http"]) and q.depth() == 4
    q.store("a", "water", [rec(6)], 6)
    assert q.ack_of("a") == 7 and [s for _, s, _, _ in q.stored("a")] == [3, 4, 5, 6, 7]
    _check_runs(q, 1)
    q.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (3,)
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master")} >= {"runs"}
    assert "records" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    db.close()


V1_SCHEMA = """
CREATE TABLE records (node TEXT NOT NULL, seq INTEGER NOT NULL, t INTEGER NOT NULL,
    kind INTEGER NOT NULL, flags INTEGER NOT NULL, role TEXT NOT NULL, synced INTEGER NOT NULL,
    data BLOB NOT NULL, received REAL NOT NULL, batch TEXT, bpos INTEGER,
    PRIMARY KEY (node, seq)) WITHOUT ROWID;
CREATE INDEX records_batch ON records (batch, bpos);
CREATE INDEX records_evict ON records (received) WHERE batch IS NULL AND flags & 2 = 0;
CREATE TABLE nodes (node TEXT PRIMARY KEY, ack INTEGER NOT NULL, role TEXT NOT NULL,
    stored INTEGER NOT NULL, duplicates INTEGER NOT NULL, gaps INTEGER NOT NULL,
    last_seen REAL NOT NULL);
CREATE TABLE batches (id TEXT PRIMARY KEY, created INTEGER NOT NULL, records INTEGER NOT NULL,
    body BLOB NOT NULL);
CREATE TABLE deliveries (batch TEXT NOT NULL, uplink TEXT NOT NULL, PRIMARY KEY (batch, uplink));
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def test_a_queue_file_of_the_first_layout_is_converted_with_its_batches(tmp_path):
    """A queue written by the previous gateway (layout 1): its pending batch keeps its id,
    keys and bytes; its waiting records are cut into the same record maps as before."""
    import sqlite3

    path = tmp_path / "q.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    data = cbor2.dumps({"level_cm": 10.5, "distance_mm": 901})
    rows = [("a", s, 1_700_000_000 + s, 1, 0, "water", 1, data, 100.0 + s,
             "b-1" if s <= 2 else None, s - 1 if s <= 2 else None) for s in (1, 2, 3)]
    db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.execute("INSERT INTO nodes VALUES ('a', 3, 'water', 3, 0, 0, 103.0)")
    old_body = b"\xa1" + cbor2.dumps("old batch bytes")   # kept as they are
    db.execute("INSERT INTO batches VALUES ('b-1', 1700, 2, ?)", (old_body,))
    db.executemany("INSERT INTO counters VALUES (?, 0)", [("duplicates",), ("gaps",)])
    db.commit()
    db.close()
    q = Queue(path, "gw", "s")
    (b1,) = q.pending_batches()
    assert (b1.id, b1.keys, b1.body) == ("b-1", (("a", 1), ("a", 2)), old_body)
    assert q.depth() == 3 and q.waiting()[0] == 1
    b2 = q.next_batch(10, 1 << 20, now=2000)
    assert b2.keys == (("a", 3),)
    assert cbor2.loads(b2.body)["records"] == [{
        "node": "a", "seq": 3, "t": 1_700_000_003, "kind": "level", "role": "water",
        "synced": True, "priority": False, "data": {"level_cm": 10.5, "distance_mm": 901}}]
    assert q.batch_delivered("b-1", "http", ["http"]) and q.depth() == 1
    q.close()
    q = Queue(path)
    assert [b.id for b in q.pending_batches()] == [b2.id] and q.ack_of("a") == 3
    q.close()


def test_a_queue_file_of_a_newer_layout_is_refused(tmp_path):
    import sqlite3

    import pytest
    from roadside.gateway.errors import QueueError

    db = sqlite3.connect(tmp_path / "q.sqlite")
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(QueueError, match="layout 99.*newer gateway"):
        Queue(tmp_path / "q.sqlite")
