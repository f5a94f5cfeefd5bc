"""The queue file's layout: its tables, the connection's settings, and the migration of a
file of an older layout when it is opened (a newer layout is refused)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

import cbor2

from .. import protocol
from ..errors import QueueError
from ..storage_health import disk_size
from ..uplink_wire import RecordEncoder
from . import runs
from .runs import RUNS_SCHEMA

log = logging.getLogger("roadside.gateway.queue")

# synchronous=FULL: in WAL mode every commit is fsynced, so an ACK promises the record
# survives a power cut, not only a crashed process (NORMAL would survive kill -9 but could
# lose the last commits on power loss, and the node would already have dropped them).
SYNCHRONOUS = "FULL"

# The queue file's layout (PRAGMA user_version). 1: the first layout (records with a batch
# column, updated when cut) and 2 (one row per record), migrated when opened; 3: this one
# (one row per run of a node's contiguous seqs, runs.py).
SCHEMA_VERSION = 3

RECORDS_V2 = """
CREATE TABLE IF NOT EXISTS records (
    node TEXT NOT NULL,
    seq INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    received REAL NOT NULL,      -- gateway time when stored (batch age, eviction order)
    size INTEGER NOT NULL,       -- bytes counted against [queue] max_bytes
    rec BLOB NOT NULL,           -- CBOR of the uplink record map, as it goes into a batch
    PRIMARY KEY (node, seq)
) WITHOUT ROWID;
-- Eviction candidates: plain telemetry (PRIORITY = 2 clear), oldest first (those already cut
-- into a batch, at or below their node's cut point, are skipped).
CREATE INDEX IF NOT EXISTS records_evict ON records (received) WHERE flags & 2 = 0;
"""

SCHEMA = RUNS_SCHEMA + """
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    ack INTEGER NOT NULL,        -- highest seq held contiguously (or given up by `from`)
    role TEXT NOT NULL,
    stored INTEGER NOT NULL,     -- records stored in total
    duplicates INTEGER NOT NULL,
    gaps INTEGER NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,         -- uuid, the Idempotency-Key
    created INTEGER NOT NULL,
    records INTEGER NOT NULL,
    body BLOB NOT NULL,          -- the exact CBOR POST body
    keys BLOB NOT NULL,          -- CBOR [[node, seq], ...] in batch order
    size INTEGER NOT NULL        -- sum of its records' `size`
);
CREATE TABLE IF NOT EXISTS deliveries (
    batch TEXT NOT NULL,
    uplink TEXT NOT NULL,
    PRIMARY KEY (batch, uplink)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT NOT NULL,            -- the batch id (its Idempotency-Key)
    created INTEGER NOT NULL,
    failed REAL NOT NULL,
    uplink TEXT NOT NULL,        -- the uplink that refused it (each uplink has its own cursor)
    reason TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (id, uplink)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# The node each link port served (gateway/session.py: another id there is refused until an
# operator accepts it). Kept in the queue file so that a restart does not forget it: else the
# first HELLO after a restart could claim any id on any port. A table of its own, created when
# missing: a file of layout 2 without it is still layout 2 (older gateways ignore it).
PORTS_SCHEMA = "CREATE TABLE IF NOT EXISTS ports (port TEXT PRIMARY KEY, node TEXT NOT NULL)"

COUNTERS = ("duplicates", "gaps", "delivered_records", "delivered_batches", "dead_letters",
            "evicted", "recovered_files", "recovered_records")
RECORD_OVERHEAD = 48     # key, integers and b-tree bookkeeping per row, roughly


def connect(path: Path) -> sqlite3.Connection:
    """The queue's one connection (WAL, synchronous=SYNCHRONOUS), its WAL sized to the volume.
    sqlite3.Error when the file cannot be opened."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
    db.execute("PRAGMA busy_timeout=5000")
    size_wal(db, path)
    return db


def size_wal(db: sqlite3.Connection, path: Path) -> None:
    """On a small volume checkpoint the WAL early and truncate it back afterwards: by
    default it grows to 1000 pages (4 MiB) before its first checkpoint, and on a 2 MiB
    volume it would fill the disk and be most of the queue's bytes."""
    total = disk_size(path)
    page = db.execute("PRAGMA page_size").fetchone()[0] or 4096
    pages = 1000 if total is None else max(16, min(1000, total // 8 // page))
    db.execute(f"PRAGMA wal_autocheckpoint = {pages}")
    db.execute(f"PRAGMA journal_size_limit = {pages * page}")


def open_schema(db: sqlite3.Connection, path: Path) -> None:
    """Create the tables, or migrate a queue file of an older layout (in one transaction:
    a crash meanwhile leaves the old file as it was); refuse a newer layout."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = {r[0] for r in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    if version > SCHEMA_VERSION:
        raise QueueError(
            f"the queue {path} has layout {version}, this gateway knows up to"
            f" {SCHEMA_VERSION}: run the newer gateway, or move the file away to start an"
            f" empty queue (its undelivered records are then not sent)")
    if "records" in tables and version < SCHEMA_VERSION:
        migrate(db, path, version)
        return
    db.executescript(SCHEMA)
    if version < SCHEMA_VERSION:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def migrate(db: sqlite3.Connection, path: Path, version: int) -> None:
    """Layout 1 or 2 -> 3, in one transaction (a crash meanwhile leaves the old file)."""
    n = db.execute("SELECT count(*) FROM records").fetchone()[0]
    log.warning(f"queue {path}: converting {n} records to the queue layout"
                f" {SCHEMA_VERSION} (once)")
    db.execute("BEGIN IMMEDIATE")
    try:
        if version < 2:
            migrate_v1(db)
        migrate_v2(db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def migrate_v2(db: sqlite3.Connection) -> None:
    """Layout 2 -> 3: each node's records, in seq order, as runs of contiguous seqs stored at
    the same time (their maps and sizes as they are)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    old = db.execute("SELECT node, seq, flags, received, size, rec FROM records"
                     " ORDER BY node, seq")
    run: list[tuple[int, int, int, bytes]] = []
    key: tuple[str, float] | None = None
    while chunk := old.fetchmany(1000):
        for node, seq, flags, received, size, rec in chunk:
            if run and (key != (node, received) or seq != run[-1][0] + 1):
                runs.insert(db, key[0], key[1], run)  # type: ignore[index]
                run = []
            key = (node, received)
            run.append((seq, size, flags, rec))
    if run and key is not None:
        runs.insert(db, key[0], key[1], run)
    db.execute("DROP TABLE records")


def migrate_v1(db: sqlite3.Connection) -> None:
    """Layout 1 -> 2: build each record's `rec` and `size` from its columns (the same
    bytes layout 1 spliced when cutting) and each batch's keys from the records' batch
    and bpos columns. Batches already cut keep their id and body."""
    db.execute("ALTER TABLE records RENAME TO records_v1")
    db.execute("DROP INDEX IF EXISTS records_batch")
    db.execute("DROP INDEX IF EXISTS records_evict")
    db.execute("ALTER TABLE batches RENAME TO batches_v1")
    for statement in (RECORDS_V2 + SCHEMA).split(";"):
        if statement.strip():
            db.execute(statement)
    enc = RecordEncoder()
    old = db.execute("SELECT node, seq, t, kind, flags, role, synced, data, received"
                     " FROM records_v1 ORDER BY node, seq")
    while chunk := old.fetchmany(1000):
        rows = []
        for node, seq, t, kind, flags, role, synced, data, received in chunk:
            rows.append((node, seq, flags, received,
                         len(data) + len(node) + len(role) + RECORD_OVERHEAD,
                         enc.record(node, seq, t, kind, role, synced,
                                    bool(flags & protocol.FLAG_PRIORITY), data)))
        db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", rows)
    for bid, created, count, body in db.execute(
            "SELECT id, created, records, body FROM batches_v1 ORDER BY rowid"
            ).fetchall():
        keys = db.execute("SELECT node, seq FROM records_v1 WHERE batch = ?"
                          " ORDER BY bpos", (bid,)).fetchall()
        size = db.execute(
            "SELECT coalesce(sum(length(data) + length(node) + length(role)), 0)"
            " FROM records_v1 WHERE batch = ?", (bid,)).fetchone()[0]
        db.execute("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?)",
                   (bid, created, count, body, cbor2.dumps([list(k) for k in keys]),
                    size + RECORD_OVERHEAD * len(keys)))
    db.execute("DROP TABLE records_v1")
    db.execute("DROP TABLE batches_v1")


def read_records(db: sqlite3.Connection, node: str | None = None, lo: int = 0,
                 hi: int | None = None) -> list[tuple[str, int, float, bytes]]:
    """(node, seq, received, rec) of the stored records (of `node`, seq in (lo, hi]), in
    (node, seq) order: the one reader of the stored records outside the queue's own code
    (tests, tools), so that they do not depend on how the layout keeps them."""
    return runs.read(db, node, lo, hi)


def ranges(keys: list[tuple[str, int]] | list[list]) -> list[tuple[str, int, int]]:
    """(node, lowest seq, highest seq) per node of a batch's keys."""
    spans: dict[str, list[int]] = {}
    for node, seq in keys:
        span = spans.get(node)
        if span is None:
            spans[node] = [seq, seq]
        elif seq > span[1]:
            span[1] = seq
        elif seq < span[0]:
            span[0] = seq
    return [(node, lo, hi) for node, (lo, hi) in spans.items()]
