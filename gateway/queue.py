"""The gateway's durable queue: one SQLite file in WAL mode, one writer.

Records are committed before the session ACKs them, so an ACKed record survives a kill -9 and
a power cut. Per node we keep the contiguity point (the ACK value): every seq at or below it
is either still here or already delivered, so a resent record at or below it is a duplicate
even after its batch was delivered and deleted.

Only records at or below their node's ACK go into batches, and batches are delivered in the
order they were cut, which together keep each node's records in seq order at the backend: a
record stored beyond a gap waits until the gap is filled or declared gone (`from` rule).

A batch is cut once: its id (the Idempotency-Key) and CBOR body are stored with it, so every
retry, also after a restart, sends the same key and the same bytes.

Each record is stored with its uplink encoding (`rec`: the CBOR of its record map in a batch),
built once when it is stored, so cutting a batch concatenates stored bytes. A batch takes, per
node, every waiting record of a seq range (from the node's last cut up to some seq at or below
its ACK), so which records a batch holds follows from the node's cut point: nothing is written
to the record rows when a batch is cut, and a delivered batch deletes its records by seq range.
The batch row keeps its (node, seq) list for the uplinks and after a restart.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import contextlib
import heapq
import itertools
import logging
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import cbor2

from . import protocol
from .errors import QueueError, QueueFullError
from .storage_health import DISK_RESERVE, Storage, budget, disk_size

T = TypeVar("T")
log = logging.getLogger("roadside.gateway.queue")

# synchronous=FULL: in WAL mode every commit is fsynced, so an ACK promises the record
# survives a power cut, not only a crashed process (NORMAL would survive kill -9 but could
# lose the last commits on power loss, and the node would already have dropped them).
SYNCHRONOUS = "FULL"

# The queue file's layout (PRAGMA user_version). 1: the first layout (records with a batch
# column, updated when cut), migrated when opened; 2: this one.
SCHEMA_VERSION = 2

SCHEMA = """
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
# Back-pressure bound: beyond this the session answers ERROR 6 (busy) and the node keeps its
# journal; far above anything a site produces while the backend is reachable.
DEFAULT_MAX_DEPTH = 5_000_000
# The disk budget ([queue] max_bytes): bytes of queued records and cut batches, counted as
# each record's `size` (its `data` CBOR + node id + role + RECORD_OVERHEAD, kept in its row)
# plus each batch body. Beyond it plain telemetry not yet cut is
# evicted oldest-first; PRIORITY records never are: when only they remain, store() refuses
# (QueueFullError: the session answers ERROR 6 busy and the nodes keep them: backpressure).
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
RECORD_OVERHEAD = 48     # key, integers and b-tree bookkeeping per row, roughly
# Cached (kind, body keys) -> uplink names of the body; bounded against odd nodes.
DATA_NAMES_MAX = 4096
EVICT_LOG_S = 10.0
# At most this many RECORDS messages in one group commit (store_many).
GROUP_MAX = 256


class StoreResult(NamedTuple):
    """What one store() did; `ack` is the value to send in the node's ACK."""

    stored: int
    duplicates: int
    ack: int
    gaps: int = 0


@dataclass(frozen=True)
class Batch:
    id: str
    created: int
    keys: tuple[tuple[str, int], ...]   # (node, seq) in batch order
    body: bytes

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class NodeInfo:
    node: str
    ack: int
    role: str
    stored: int
    duplicates: int
    gaps: int
    last_seen: float


def _uint_head(major: int, n: int) -> bytes:
    """A CBOR head (major type + length) in shortest form, for splicing encoded items."""
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError(n)


# Encoded pieces of an uplink record map (8 pairs, keys in this order): a record's `rec` is
# spliced from them, the same bytes as cbor2.dumps of the dict
# {"node", "seq", "t", "kind", "role", "synced", "priority", "data"}.
_REC_NODE = b"\xa8" + cbor2.dumps("node")
_REC_SEQ, _REC_T, _REC_KIND, _REC_ROLE, _REC_SYNCED, _REC_PRIORITY, _REC_DATA = (
    cbor2.dumps(k) for k in ("seq", "t", "kind", "role", "synced", "priority", "data"))
_TRUE, _FALSE = cbor2.dumps(True), cbor2.dumps(False)
_KIND_ENC = {k: cbor2.dumps(name) for k, name in protocol.KIND_NAMES.items()}
# (synced, priority) -> the encoded pairs between `role`'s value and `data`'s value.
_FLAGS_ENC = {(sy, pr): b"".join((_REC_SYNCED, _TRUE if sy else _FALSE, _REC_PRIORITY,
                                  _TRUE if pr else _FALSE, _REC_DATA))
              for sy in (False, True) for pr in (False, True)}


def encode_rec(node_enc: bytes, seq: int, t: int, kind: int, role_enc: bytes, synced: bool,
               priority: bool, data: bytes) -> bytes:
    """The uplink record map of one record from encoded parts (`node_enc`, `role_enc`: CBOR
    texts; `data`: CBOR of the named body map)."""
    dumps = cbor2.dumps
    return b"".join((_REC_NODE, node_enc, _REC_SEQ, dumps(seq), _REC_T, dumps(t), _REC_KIND,
                     _KIND_ENC.get(kind) or dumps(protocol.kind_name(kind)), _REC_ROLE,
                     role_enc, _FLAGS_ENC[bool(synced), bool(priority)], data))


def _ranges(keys: Iterable[tuple[str, int]]) -> list[tuple[str, int, int]]:
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


class Queue:
    """The SQLite queue. Methods are synchronous; `call()` runs one on the writer thread."""

    def __init__(self, path: str | Path, gateway_id: str = "gw", site: str = "site",
                 max_depth: int = DEFAULT_MAX_DEPTH,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path)
        self.gateway_id = gateway_id
        self.site = site
        self.max_depth = max_depth
        self.max_bytes = max_bytes
        self.backpressure = False      # the last store was refused for lack of budget
        self._evicted_unlogged = 0
        self._evict_logged = 0.0
        self.storage = Storage(self.path)
        self._texts: dict[str, bytes] = {}                       # CBOR of node ids, roles
        self._data_names: dict[tuple, tuple[tuple[int, str], ...]] = {}
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._size_wal()
            self._open_schema()
            self._db.execute(PORTS_SCHEMA)
            for name in COUNTERS:
                self._db.execute("INSERT OR IGNORE INTO counters VALUES (?, 0)", (name,))
            self._load_state()
        except sqlite3.Error as exc:
            damaged = "" if isinstance(exc, sqlite3.OperationalError) else (
                "; the file is damaged: `roadside gateway run` moves it aside and re-queues"
                " every readable record (docs/GATEWAY.md, damaged queue file)")
            raise QueueError(f"cannot open the queue {self.path}: {exc}{damaged}") from exc
        self._in_group = False         # store_many(): stores use savepoints in one commit
        self._group: list[tuple[tuple, asyncio.Future[StoreResult]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue")

    def _size_wal(self) -> None:
        """On a small volume checkpoint the WAL early and truncate it back afterwards: by
        default it grows to 1000 pages (4 MiB) before its first checkpoint, and on a 2 MiB
        volume it would fill the disk and be most of the queue's bytes."""
        total = disk_size(self.path)
        page = self._db.execute("PRAGMA page_size").fetchone()[0] or 4096
        pages = 1000 if total is None else max(16, min(1000, total // 8 // page))
        self._db.execute(f"PRAGMA wal_autocheckpoint = {pages}")
        self._db.execute(f"PRAGMA journal_size_limit = {pages * page}")

    def _open_schema(self) -> None:
        """Create the tables, or migrate a queue file of an older layout (in one transaction:
        a crash meanwhile leaves the old file as it was); refuse a newer layout."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version > SCHEMA_VERSION:
            raise QueueError(
                f"the queue {self.path} has layout {version}, this gateway knows up to"
                f" {SCHEMA_VERSION}: run the newer gateway, or move the file away to start an"
                f" empty queue (its undelivered records are then not sent)")
        if "records" in tables and version < SCHEMA_VERSION:
            self._migrate_v1()
            return
        self._db.executescript(SCHEMA)
        if version < SCHEMA_VERSION:
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _migrate_v1(self) -> None:
        """Layout 1 -> 2: build each record's `rec` and `size` from its columns (the same
        bytes layout 1 spliced when cutting) and each batch's keys from the records' batch
        and bpos columns. Batches already cut keep their id and body."""
        db = self._db
        n = db.execute("SELECT count(*) FROM records").fetchone()[0]
        log.warning(f"queue {self.path}: converting {n} records to the queue layout"
                    f" {SCHEMA_VERSION} (once)")
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("ALTER TABLE records RENAME TO records_v1")
            db.execute("DROP INDEX IF EXISTS records_batch")
            db.execute("DROP INDEX IF EXISTS records_evict")
            db.execute("ALTER TABLE batches RENAME TO batches_v1")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            texts: dict[str, bytes] = {}
            old = db.execute("SELECT node, seq, t, kind, flags, role, synced, data, received"
                             " FROM records_v1 ORDER BY node, seq")
            while chunk := old.fetchmany(1000):
                rows = []
                for node, seq, t, kind, flags, role, synced, data, received in chunk:
                    node_enc = texts.get(node) or texts.setdefault(node, cbor2.dumps(node))
                    role_enc = texts.get(role) or texts.setdefault(role, cbor2.dumps(role))
                    rows.append((node, seq, flags, received,
                                 len(data) + len(node) + len(role) + RECORD_OVERHEAD,
                                 encode_rec(node_enc, seq, t, kind, role_enc, synced,
                                            flags & protocol.FLAG_PRIORITY, data)))
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
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _load_state(self) -> None:
        """The in-memory mirror of the file (at open, and after a failed group commit)."""
        self.nodes: dict[str, NodeInfo] = {
            row[0]: NodeInfo(*row) for row in self._db.execute(
                "SELECT node, ack, role, stored, duplicates, gaps, last_seen FROM nodes")
        }
        self.counters: dict[str, int] = dict(
            self._db.execute("SELECT name, value FROM counters").fetchall())
        self._depth = self._db.execute("SELECT count(*) FROM records").fetchone()[0]
        self._pending = self._db.execute("SELECT count(*) FROM batches").fetchone()[0]
        self._bytes = self._db.execute(
            "SELECT coalesce(sum(size), 0) FROM records").fetchone()[0] \
            + self._db.execute("SELECT coalesce(sum(length(body)), 0) FROM batches").fetchone()[0]
        # Per node, the highest seq already cut into a batch: every record of the node at or
        # below it is in a pending batch (or gone), every one above it waits. A node with no
        # pending batch has all its records waiting (0).
        self._cut_upto: dict[str, int] = {}
        for (keys,) in self._db.execute("SELECT keys FROM batches"):
            for node, _lo, hi in _ranges(cbor2.loads(keys)):
                if hi > self._cut_upto.get(node, 0):
                    self._cut_upto[node] = hi
        # Per node, the newest PRIORITY record not yet cut: the batcher cuts it at once.
        self._urgent: dict[str, int] = {
            node: seq for node, seq in self._db.execute(
                "SELECT node, max(seq) FROM records WHERE flags & ? != 0 GROUP BY node",
                (protocol.FLAG_PRIORITY,))
            if seq > self._cut_upto.get(node, 0)}
        # Per node, its waiting records (above its cut point, at or below its ACK) in seq
        # order, as segments [highest seq, eff, count, bytes of rec, oldest received, newest
        # received]: `eff` is the running max of the receive times along the node's waiting
        # seqs (the same for every record of a segment), the key by which batches take
        # records oldest first while keeping each node's in seq order. One segment per store
        # that advanced the ACK, so cutting and waiting() need no query.
        self._segs: dict[str, deque[list]] = {}
        self._wait_count = 0
        self._wait_bytes = 0
        for node, info in self.nodes.items():
            self._add_segments(node, self._query_segments(
                node, self._cut_upto.get(node, 0), info.ack))

    # -- plumbing ------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a queue method on the single writer thread (commits fsync; keep the loop free)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._db.close()

    def _bump(self, name: str, by: int) -> None:
        if by:
            self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))
            self.counters[name] += by

    def _transaction(self) -> _Tx:
        return _Tx(self._db, savepoint=self._in_group, on_done=self._committed)

    def _committed(self, exc: BaseException | None) -> None:
        """After a transaction: it committed (exc None), or a storage error rolled it back,
        so the in-memory mirror (changed inside it by _delete_batch) is read again."""
        if exc is None:
            self.storage.committed()
            return
        self.storage.failed(f"cannot commit: {exc}")
        with contextlib.suppress(sqlite3.Error):
            self._load_state()

    # -- group commit ----------------------------------------------------------------------

    async def store_grouped(self, node: str, role: str, records: Iterable[protocol.Record],
                            from_seq: int = 0, now: float | None = None) -> StoreResult:
        """store() with group commit: the RECORDS of every link that arrive while a commit is
        on the disk are stored together and committed (one fsync) by the next store_many();
        each caller gets its own result, or its own exception, only after that commit. With
        one link this is store() on the writer thread."""
        future: asyncio.Future[StoreResult] = asyncio.get_running_loop().create_future()
        self._group.append(((node, role, tuple(records), from_seq, now), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_groups(), name="queue commit")
        return await future

    async def _flush_groups(self) -> None:
        while self._group:
            items, self._group = self._group[:GROUP_MAX], self._group[GROUP_MAX:]
            try:
                results: list[Any] = await self.call(self.store_many, [a for a, _ in items])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                results = [exc] * len(items)
            for (_, future), result in zip(items, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def store_many(self, items: list[tuple]) -> list[StoreResult | Exception]:
        """Several store() calls in one transaction: each in its own savepoint (a refused one,
        e.g. QueueFullError, leaves the others stored), one COMMIT for all. Nothing is
        returned before that COMMIT, so an ACK still follows a durable commit."""
        results: list[StoreResult | Exception] = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise QueueError(f"cannot store records: {exc}") from exc
        self._in_group = True
        try:
            for args in items:
                try:
                    results.append(self.store(*args))
                except QueueError as exc:
                    if not self._db.in_transaction and isinstance(exc.__cause__,
                                                                  sqlite3.Error):
                        # SQLite rolled back the whole group (a full disk): nothing of it
                        # is stored, every caller gets the error.
                        raise exc.__cause__ from exc
                    results.append(exc)
                except sqlite3.Error:
                    raise          # the connection itself failed: the whole group goes
                except Exception as exc:  # noqa: BLE001 - one message fails alone
                    # store() changes nothing before its savepoint and rolls it back on
                    # any exception, so the other messages of the group still commit.
                    log.error(f"cannot store records of {args[0]}: {exc!r}")
                    results.append(QueueError(f"cannot store records of {args[0]}: {exc}"))
            self._in_group = False
            self._db.execute("COMMIT")
        except BaseException as exc:
            self._in_group = False
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self._load_state()     # the stores above changed the mirror; the file did not
            if isinstance(exc, sqlite3.Error):
                self.storage.failed(f"cannot commit stored records: {exc}")
                raise QueueError(f"cannot commit stored records: {exc}") from exc
            raise
        self.storage.committed()
        return results

    # -- records in ------------------------------------------------------------------------

    def ack_of(self, node: str) -> int:
        info = self.nodes.get(node)
        return info.ack if info else 0

    def highest_seq(self, node: str) -> int:
        """The highest seq of `node` this queue ever stored: its ACK, or a record held beyond
        a gap (a node whose counter is not above it would reuse seqs; PROTOCOL.md 2.2)."""
        row = self._db.execute("SELECT max(seq) FROM records WHERE node = ?", (node,)).fetchone()
        return max(self.ack_of(node), row[0] or 0)

    def port_bindings(self) -> dict[str, str]:
        """port -> the node it served last, as kept across restarts (bind_port)."""
        return dict(self._db.execute("SELECT port, node FROM ports").fetchall())

    def bind_port(self, port: str, node: str) -> None:
        """Remember that `port` serves `node` (committed: a restart keeps it)."""
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO ports (port, node) VALUES (?, ?)",
                             (port, node))

    def hello(self, node: str, role: str, first_unacked: int,
              now: float | None = None) -> StoreResult:
        """A node said HELLO: apply its first-unacked seq (the `from` rule); return the ACK."""
        return self.store(node, role, [], first_unacked, now)

    def store(self, node: str, role: str, records: Iterable[protocol.Record],
              from_seq: int = 0, now: float | None = None) -> StoreResult:
        """Store records of one node and commit; returns (stored, duplicates, ack, gaps).

        `from_seq` is the node's lowest unacked seq: anything below it that is missing here is
        gone for good, so the contiguity point moves up to `from_seq - 1` and the gap is counted.
        """
        now = time.time() if now is None else now
        records = list(records)
        info = self.nodes.get(node)
        fresh = info is None
        if info is None:
            info = NodeInfo(node, 0, role, 0, 0, 0, now)
        ack = info.ack
        rows = self._rows(node, role, records, ack, now)
        dups = len(records) - len(rows)
        if rows and self._depth + len(rows) > self.max_depth:
            raise QueueFullError(f"queue holds {self._depth} records (max {self.max_depth})")
        incoming = sum(r[4] for r in rows)
        evict, freed = self._eviction(node, ack, incoming)
        try:
            with self._transaction():
                if evict:
                    self._db.executemany("DELETE FROM records WHERE node = ? AND seq = ?",
                                         [(n, seq) for n, seq, _ in evict])
                    self._bump("evicted", len(evict))
                stored = 0
                if rows:
                    cur = self._db.executemany(
                        "INSERT OR IGNORE INTO records (node, seq, flags, received, size, rec)"
                        " VALUES (?, ?, ?, ?, ?, ?)", rows)
                    stored = cur.rowcount
                    dups += len(rows) - stored
                gaps = 0
                if from_seq - 1 > ack:
                    held = self._db.execute(
                        "SELECT count(*) FROM records WHERE node = ? AND seq > ? AND seq < ?",
                        (node, ack, from_seq)).fetchone()[0]
                    gaps = from_seq - 1 - ack - held
                    ack = from_seq - 1
                ack = self._advance(node, ack, rows)
                segments = []
                if ack > info.ack:     # newly waiting: the records in (old ACK, ACK]
                    if stored == len(rows) == ack - info.ack and \
                            [r[1] for r in rows] == list(range(info.ack + 1, ack + 1)):
                        segments = [[ack, now, stored, sum(len(r[5]) for r in rows), now,
                                     now]]
                    else:
                        segments = self._query_segments(node, info.ack, ack)
                info.ack, info.role, info.last_seen = ack, role, now
                info.stored += stored
                info.duplicates += dups
                info.gaps += gaps
                self._db.execute(
                    "INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node) DO UPDATE"
                    " SET ack = excluded.ack, role = excluded.role, stored = excluded.stored,"
                    " duplicates = excluded.duplicates, gaps = excluded.gaps,"
                    " last_seen = excluded.last_seen",
                    (node, ack, role, info.stored, info.duplicates, info.gaps, now))
                self._bump("duplicates", dups)
                self._bump("gaps", gaps)
        except (sqlite3.Error, OverflowError, ValueError, TypeError) as exc:
            # The savepoint (or transaction) rolled back: this message alone is not stored
            # (OverflowError: an integer beyond SQLite's int64 that slipped past decoding).
            if not fresh:
                self._reload_node(node)
            raise QueueError(f"cannot store records of {node}: {exc}") from exc
        self.nodes[node] = info
        for n, seq, length in evict:
            self._unwait(n, seq, length)
        self._add_segments(node, segments)
        self._depth += stored - len(evict)
        self._bytes += incoming - freed
        if rows:
            self.backpressure = False
        if evict:
            self._log_evicted(len(evict), now)
        urgent = [r[1] for r in rows if r[2] & protocol.FLAG_PRIORITY]
        if urgent and stored:
            self._urgent[node] = max(self._urgent.get(node, 0), *urgent)
        return StoreResult(stored, dups, ack, gaps)

    def _rows(self, node: str, role: str, records: list[protocol.Record], ack: int,
              now: float) -> list[tuple]:
        """The rows to insert for the records beyond `ack`: (node, seq, flags, received, size,
        rec), `rec` being the record's uplink map encoded once, here."""
        texts = self._texts
        node_enc = texts.get(node) or texts.setdefault(node, cbor2.dumps(node))
        role_enc = texts.get(role) or texts.setdefault(role, cbor2.dumps(role))
        head = _REC_NODE + node_enc + _REC_SEQ
        role_part = _REC_ROLE + role_enc
        base = len(node) + len(role) + RECORD_OVERHEAD
        t_now = int(now)
        dumps = cbor2.dumps
        join = b"".join
        names_of = self._data_names
        rows = []
        for r in records:
            seq = r.seq
            if seq <= ack:
                continue
            kind, flags, body = r.kind, r.flags, r.body
            # `data`: the body with named keys in ascending key order (protocol.body_to_data);
            # the names of each (kind, key set) are looked up once.
            names = names_of.get((kind, *body))
            if names is None:
                names = self._names(kind, body)
            data = dumps({name: body[k] for k, name in names})
            unsynced = flags & protocol.FLAG_CLOCK_UNSYNCED
            rows.append((node, seq, flags, now, len(data) + base, join((
                head, dumps(seq), _REC_T, dumps(t_now if unsynced else r.t), _REC_KIND,
                _KIND_ENC.get(kind) or dumps(protocol.kind_name(kind)), role_part,
                _FLAGS_ENC[not unsynced, bool(flags & protocol.FLAG_PRIORITY)], data))))
        return rows

    def _names(self, kind: int, body: dict[int, Any]) -> tuple[tuple[int, str], ...]:
        names = protocol.BODY_NAMES.get(kind, {})
        pairs = tuple((k, names.get(k, str(k))) for k in sorted(body))
        if len(self._data_names) < DATA_NAMES_MAX:
            self._data_names[(kind, *body)] = pairs
        return pairs

    def _eviction(self, node: str, ack: int,
                  incoming: int) -> tuple[list[tuple[str, int, int]], int]:
        """The records to evict so that `incoming` bytes fit the budget: plain telemetry not
        yet in a batch (a cut batch keeps its exact bytes), oldest first, only at or below its
        node's ACK (a record beyond a gap is needed to advance the ACK). Raises QueueFullError
        (backpressure) when even evicting all of them would not make room."""
        disk = self.budget() if incoming else self.max_bytes
        if disk < self.max_bytes and self._bytes + incoming > disk:
            # The volume, not max_bytes, is short: evicting would not give disk space back
            # (a delete needs WAL space itself), so the nodes keep their records (busy).
            self.backpressure = True
            raise QueueFullError(
                f"the queue's volume is nearly full: the disk allows {disk} bytes of queue"
                f" ([queue] max_bytes is {self.max_bytes}); free space on the volume of"
                f" {self.path}")
        need = self._bytes + incoming - self.max_bytes
        if incoming == 0 or need <= 0:
            return [], 0
        evict: list[tuple[str, int, int]] = []
        freed = 0
        cut = self._cut_upto
        for n, seq, size, length in self._db.execute(
                "SELECT node, seq, size, length(rec) FROM records WHERE flags & 2 = 0"
                " ORDER BY received"):
            if seq > (ack if n == node else self.ack_of(n)) or seq <= cut.get(n, 0):
                continue
            evict.append((n, seq, length))
            freed += size
            if freed >= need:
                return evict, freed
        self.backpressure = True
        raise QueueFullError(
            f"queue holds {self._bytes} bytes, [queue] max_bytes is {self.max_bytes} and only"
            f" priority records (never evicted) or batches being delivered are left")

    def budget(self) -> int:
        """The bytes the queue may count now: [queue] max_bytes, less when the volume is
        short of free space (storage_health.budget: the WAL needs about as much again).
        Beyond max_bytes telemetry is evicted; beyond what the disk allows the nodes are
        told busy (evicting frees no disk space)."""
        free = self.storage.free_bytes()
        if free is None or free - DISK_RESERVE > 2 * (self.max_bytes - self._bytes):
            return self.max_bytes                # the disk is not what limits
        freelist, page = (self._db.execute(f"PRAGMA {p}").fetchone()[0]
                          for p in ("freelist_count", "page_size"))
        return budget(self.max_bytes, self._bytes, free, freelist * page)

    def _log_evicted(self, n: int, now: float) -> None:
        self._evicted_unlogged += n
        if now - self._evict_logged >= EVICT_LOG_S:
            log.warning(f"queue full ([queue] max_bytes = {self.max_bytes}): evicted"
                        f" {self._evicted_unlogged} telemetry records, oldest first"
                        f" ({self.counters['evicted']} in total)")
            self._evicted_unlogged = 0
            self._evict_logged = now

    def bytes(self) -> int:
        """Bytes counted against [queue] max_bytes (records and cut batches)."""
        return self._bytes

    def _advance(self, node: str, ack: int, rows: list[tuple]) -> int:
        # Fast path: the new records continue the contiguous run and nothing waits beyond it.
        seqs = [r[1] for r in rows]
        if seqs and seqs == list(range(ack + 1, ack + 1 + len(seqs))):
            beyond = self._db.execute(
                "SELECT 1 FROM records WHERE node = ? AND seq > ? LIMIT 1",
                (node, seqs[-1])).fetchone()
            if beyond is None:
                return seqs[-1]
        for (seq,) in self._db.execute(
                "SELECT seq FROM records WHERE node = ? AND seq > ? ORDER BY seq", (node, ack)):
            if seq != ack + 1:
                break
            ack = seq
        return ack

    # -- waiting records: segments --------------------------------------------------------

    def _query_segments(self, node: str, lo: int, hi: int) -> list[list]:
        """Segments of the node's records in (lo, hi] (runs of equal running-max receive time;
        the running max starts at `lo`: add_segments continues it from the node's last)."""
        if hi <= lo:
            return []
        return [list(row) for row in self._db.execute(
            "SELECT max(seq), eff, count(*), sum(length(rec)), min(received), max(received)"
            " FROM (SELECT seq, rec, received, max(received) OVER (ORDER BY seq ROWS UNBOUNDED"
            " PRECEDING) AS eff FROM records WHERE node = ? AND seq > ? AND seq <= ?)"
            " GROUP BY eff ORDER BY eff", (node, lo, hi))]

    def _add_segments(self, node: str, segments: list[list]) -> None:
        if not segments:
            return
        segs = self._segs.get(node)
        if segs is None:
            segs = self._segs[node] = deque()
        for seg in segments:
            if segs and segs[-1][1] > seg[1]:
                seg[1] = segs[-1][1]           # the running max goes on from the last one
            segs.append(seg)
            self._wait_count += seg[2]
            self._wait_bytes += seg[3]

    def _unwait(self, node: str, seq: int, length: int) -> None:
        """A waiting record was evicted: its segment is read again (its count, and the
        receive times the running max goes by)."""
        segs = self._segs.get(node)
        if segs:
            i = bisect.bisect_left(segs, seq, key=lambda seg: seg[0])
            if i < len(segs):
                self._resegment(node, i)

    def _resegment(self, node: str, i: int) -> None:
        """Read segment `i` of `node` again from the file, then carry the running max on."""
        segs = self._segs[node]
        lo = segs[i - 1][0] if i else self._cut_upto.get(node, 0)
        old = segs[i]
        fresh = self._query_segments(node, lo, old[0])
        self._wait_count += sum(seg[2] for seg in fresh) - old[2]
        self._wait_bytes += sum(seg[3] for seg in fresh) - old[3]
        del segs[i]
        for seg in reversed(fresh):
            segs.insert(i, seg)
        if not segs:
            del self._segs[node]
        else:
            self._carry(segs, max(i - 1, 0))

    @staticmethod
    def _carry(segs: deque[list], i: int) -> None:
        """Recompute the running max (eff) from segment `i` on; stops where it is unchanged."""
        run = segs[i - 1][1] if i else None
        for j in range(i, len(segs)):
            seg = segs[j]
            run = seg[5] if run is None or seg[5] > run else run
            if seg[1] == run and j > i:
                break
            seg[1] = run

    def _consume(self, node: str, taken: list[tuple[int, int]]) -> None:
        """Records of `node` (seq, length of rec), a prefix of its waiting ones in seq order,
        were cut: take them out of its segments."""
        segs = self._segs.get(node)
        if not segs:
            return
        for seq, length in taken:
            while len(segs) > 1 and segs[0][0] < seq:
                self._pop_segment(segs)        # exhausted (its count is 0 now)
            seg = segs[0]
            seg[2] -= 1
            seg[3] -= length
            self._wait_count -= 1
            self._wait_bytes -= length
        last = taken[-1][0]
        while segs and (segs[0][0] <= last or segs[0][2] <= 0):
            self._pop_segment(segs)
        if not segs:
            del self._segs[node]
            return
        front = segs[0]
        if front[4] != front[5]:
            # Part of a segment of several receive times was cut: the running max of what is
            # left starts again from its own records (as a scan from the cut point would).
            self._resegment(node, 0)
        else:
            self._carry(segs, 0)

    def _pop_segment(self, segs: deque[list]) -> None:
        seg = segs.popleft()
        self._wait_count -= seg[2]             # 0 unless the records were counted twice
        self._wait_bytes -= seg[3]

    def _reload_node(self, node: str) -> None:
        row = self._db.execute("SELECT node, ack, role, stored, duplicates, gaps, last_seen"
                               " FROM nodes WHERE node = ?", (node,)).fetchone()
        if row:
            self.nodes[node] = NodeInfo(*row)

    # -- batches out ---------------------------------------------------------------------

    def depth(self) -> int:
        """Records held and not yet delivered (waiting, in pending batches, beyond gaps)."""
        return self._depth

    def waiting(self, limit: int = 10_000) -> tuple[int, int, float | None]:
        """Records ready to be cut: count, their uplink bytes, and the receive time of the
        oldest (kept in memory: no query). `limit` is kept for callers; the count is exact."""
        if not self._wait_count:
            return 0, 0, None
        oldest = min(seg[4] for segs in self._segs.values() for seg in segs if seg[2] > 0)
        return self._wait_count, self._wait_bytes, oldest

    def next_batch(self, max_records: int, max_bytes: int,
                   now: float | None = None) -> Batch | None:
        """Cut and persist a batch from waiting records (None when there are none).

        Records are taken oldest first, but a record is only taken together with every
        waiting record of its node below it, so a node's records stay in seq order.
        """
        return self._cut(self._candidates(max_records), max_bytes, now)

    def priority_waiting(self) -> bool:
        """A PRIORITY record is stored, contiguous (at or below its node's ACK) and not cut."""
        for node, upto in list(self._urgent.items()):
            lo = self._cut_upto.get(node, 0)
            if upto <= lo:
                del self._urgent[node]        # already cut (by a regular batch, too)
            elif self.ack_of(node) > lo:
                return True
        return False

    def next_priority_batch(self, max_records: int, max_bytes: int,
                            now: float | None = None) -> Batch | None:
        """Cut a batch now for the nodes that have a waiting PRIORITY record: each such node's
        waiting records from its oldest up to its newest priority record (never beyond its
        ACK), so the priority record does not overtake its own node's older records. Other
        nodes' waiting records are left for the regular cut."""
        rows: list[tuple] = []
        for node, upto in list(self._urgent.items()):
            lo = self._cut_upto.get(node, 0)
            hi = min(upto, self.ack_of(node))
            if hi <= lo or len(rows) >= max_records:
                continue
            rows.extend(self._db.execute(
                "SELECT node, seq, size, rec FROM records"
                " WHERE node = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (node, lo, hi, max_records - len(rows))).fetchall())
        return self._cut(rows, max_bytes, now)

    def _cut(self, rows: list[tuple], max_bytes: int, now: float | None) -> Batch | None:
        """A batch of a prefix of `rows` (each node's in seq order) up to `max_bytes`: the
        records' stored encodings after the batch's head. Persisted (id, body, keys); nothing
        is written to the records: the node's cut point now covers them."""
        now = time.time() if now is None else now
        created = int(now)
        batch_id = str(uuid.uuid4())
        head = b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in (
            ("batch", batch_id), ("gateway", self.gateway_id), ("site", self.site),
            ("created", created))) + cbor2.dumps("records")
        size = 1 + len(head) + 9
        encoded: list[bytes] = []
        keys: list[tuple[str, int]] = []
        budget = 0
        taken: dict[str, list[tuple[int, int]]] = {}
        for node, seq, rsize, rec in rows:
            if encoded and size + len(rec) > max_bytes:
                break
            size += len(rec)
            budget += rsize
            encoded.append(rec)
            keys.append((node, seq))
            per_node = taken.get(node)
            if per_node is None:
                per_node = taken[node] = []
            per_node.append((seq, len(rec)))
        if not keys:
            return None
        body = b"\xa5" + head + _uint_head(4, len(encoded)) + b"".join(encoded)
        with self._transaction():
            self._db.execute("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?)",
                             (batch_id, created, len(keys), body,
                              cbor2.dumps([list(k) for k in keys]), budget))
        self._pending += 1
        self._bytes += len(body)
        for node, per_node in taken.items():   # in seq order per node
            self._cut_upto[node] = per_node[-1][0]
            self._consume(node, per_node)
        return Batch(batch_id, created, tuple(keys), body)

    def _candidates(self, limit: int) -> list[tuple]:
        """Up to `limit` waiting records, oldest first, each node's in seq order.

        The nodes' segments are merged in memory by their running max of receive times
        (which never decreases along a node's seqs, so taking a prefix of the merge keeps
        every node's records in order; ties go by node id); then each node's part is read in
        one range query, and the parts are interleaved in merge order.
        """
        heap = [(segs[0][1], node, 0) for node, segs in self._segs.items()]
        heapq.heapify(heap)
        plan: list[tuple[str, int]] = []          # (node, records) in merge order
        take: dict[str, list[int]] = {}           # node -> [records, highest seq]
        total = 0
        while heap and total < limit:
            _eff, node, i = heapq.heappop(heap)
            segs = self._segs[node]
            seg = segs[i]
            n = min(seg[2], limit - total)
            if n > 0:
                plan.append((node, n))
                t = take.setdefault(node, [0, 0])
                t[0] += n
                t[1] = seg[0]
                total += n
            if i + 1 < len(segs):
                heapq.heappush(heap, (segs[i + 1][1], node, i + 1))
        parts = {}
        for node, (n, hi) in take.items():
            parts[node] = iter(self._db.execute(
                "SELECT node, seq, size, rec FROM records WHERE node = ? AND seq > ? AND"
                " seq <= ? ORDER BY seq LIMIT ?",
                (node, self._cut_upto.get(node, 0), hi, n)).fetchall())
        rows: list[tuple] = []
        for node, n in plan:
            part = parts[node]
            rows.extend(itertools.islice(part, n))
        return rows

    def pending_batches(self) -> list[Batch]:
        """Batches cut and not yet delivered everywhere, oldest first (after a restart too)."""
        return [Batch(bid, created, _keys(keys), body) for bid, created, body, keys in
                self._db.execute("SELECT id, created, body, keys FROM batches ORDER BY rowid")]

    def next_pending(self, uplink: str) -> Batch | None:
        """The oldest batch `uplink` has not delivered yet (batches go out in cut order)."""
        row = self._db.execute(
            "SELECT id, created, body, keys FROM batches b WHERE NOT EXISTS (SELECT 1 FROM"
            " deliveries d WHERE d.batch = b.id AND d.uplink = ?) ORDER BY rowid LIMIT 1",
            (uplink,)).fetchone()
        if row is None:
            return None
        return Batch(row[0], row[1], _keys(row[3]), row[2])

    def batches_pending(self) -> int:
        """Batches cut and not yet delivered (kept in memory: /status reads it on the loop)."""
        return self._pending

    def backlog(self, uplink: str) -> int:
        """Batches cut that `uplink` has not delivered yet (its cursor's distance to the end)."""
        return self._db.execute(
            "SELECT count(*) FROM batches b WHERE NOT EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.batch = b.id AND d.uplink = ?)", (uplink,)).fetchone()[0]

    def delivered_by(self, uplink: str) -> set[str]:
        return {r[0] for r in self._db.execute(
            "SELECT batch FROM deliveries WHERE uplink = ?", (uplink,))}

    def batch_delivered(self, batch_id: str, uplink: str | None = None,
                        uplinks: Iterable[str] = ()) -> bool:
        """Record a 2xx; once every uplink in `uplinks` has one, delete the batch and records.

        Returns True when the batch was deleted.
        """
        with self._transaction():
            if uplink is not None:
                self._db.execute("INSERT OR IGNORE INTO deliveries VALUES (?, ?)",
                                 (batch_id, uplink))
            done = {r[0] for r in self._db.execute(
                "SELECT uplink FROM deliveries WHERE batch = ?", (batch_id,))}
            if not set(uplinks) <= done:
                return False
            n = self._delete_batch(batch_id)
            self._bump("delivered_records", n)
            self._bump("delivered_batches", 1)
        return True

    def settle(self, uplinks: Iterable[str]) -> int:
        """Delete the batches every uplink in `uplinks` has delivered or dead-lettered. After
        an uplink left the config (a restart or a SIGHUP reload), batches that only it still
        lacked would stay for good, count as pending and stop the batcher. Returns how many
        batches went."""
        wanted = set(uplinks)
        if not wanted:
            return 0
        done: dict[str, set[str]] = {}
        for batch_id, uplink in self._db.execute("SELECT batch, uplink FROM deliveries"):
            done.setdefault(batch_id, set()).add(uplink)
        settled = [b for b, got in done.items() if wanted <= got]
        with self._transaction():
            for batch_id in settled:
                self._bump("delivered_records", self._delete_batch(batch_id))
                self._bump("delivered_batches", 1)
        return len(settled)

    def dead_letter(self, batch_id: str, uplink: str, reason: str,
                    uplinks: Iterable[str] = ()) -> None:
        """Move a batch `uplink` refused as malformed aside, so it cannot block its cursor.

        The batch counts as done for `uplink`; it is deleted once every uplink in `uplinks`
        has delivered or refused it (at once when `uplinks` is empty).
        """
        with self._transaction():
            row = self._db.execute("SELECT created, body FROM batches WHERE id = ?",
                                   (batch_id,)).fetchone()
            if row is None:
                return
            self._db.execute("INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?)",
                             (batch_id, row[0], time.time(), uplink, reason, row[1]))
            self._db.execute("INSERT OR IGNORE INTO deliveries VALUES (?, ?)",
                             (batch_id, uplink))
            done = {r[0] for r in self._db.execute(
                "SELECT uplink FROM deliveries WHERE batch = ?", (batch_id,))}
            if set(uplinks) <= done:
                self._delete_batch(batch_id)
            self._bump("dead_letters", 1)

    def dead_letters(self) -> list[tuple[str, str, int, float, str, int]]:
        """(id, uplink, created, failed, reason, body bytes) of every dead letter, oldest first."""
        return self._db.execute(
            "SELECT id, uplink, created, failed, reason, length(body) FROM dead_letters"
            " ORDER BY failed").fetchall()

    # builtins.bytes: inside Queue, `bytes` is the method above
    def dead_letter_body(self, batch_id: str, uplink: str) -> builtins.bytes | None:
        row = self._db.execute("SELECT body FROM dead_letters WHERE id = ? AND uplink = ?",
                               (batch_id, uplink)).fetchone()
        return row[0] if row else None

    def drop_dead_letter(self, batch_id: str, uplink: str | None = None) -> int:
        """Delete a dead letter (of one uplink, or of all); returns how many rows went."""
        with self._transaction():
            if uplink is None:
                cur = self._db.execute("DELETE FROM dead_letters WHERE id = ?", (batch_id,))
            else:
                cur = self._db.execute("DELETE FROM dead_letters WHERE id = ? AND uplink = ?",
                                       (batch_id, uplink))
        return cur.rowcount

    def _delete_batch(self, batch_id: str) -> int:
        """Delete a batch and its records (per node, the seq range it took); returns how many
        records went."""
        row = self._db.execute("SELECT keys, size, length(body) FROM batches WHERE id = ?",
                               (batch_id,)).fetchone()
        if row is None:
            return 0
        deleted = self._db.executemany(
            "DELETE FROM records WHERE node = ? AND seq >= ? AND seq <= ?",
            _ranges(cbor2.loads(row[0]))).rowcount
        self._db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
        self._db.execute("DELETE FROM deliveries WHERE batch = ?", (batch_id,))
        self._pending -= 1
        self._bytes -= row[1] + row[2]
        if self._bytes < self.max_bytes:
            self.backpressure = False
        self._depth -= deleted
        return deleted


def _keys(blob: bytes) -> tuple[tuple[str, int], ...]:
    return tuple((node, seq) for node, seq in cbor2.loads(blob))


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception; inside store_many() a
    SAVEPOINT ... RELEASE (or ROLLBACK TO) in the group's transaction."""

    def __init__(self, db: sqlite3.Connection, savepoint: bool = False,
                 on_done: Callable[[BaseException | None], None] | None = None) -> None:
        self.db = db
        self.savepoint = savepoint
        self.on_done = on_done

    def __enter__(self) -> None:
        try:
            self.db.execute("SAVEPOINT store" if self.savepoint else "BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            if not self.savepoint and self.on_done is not None:
                self.on_done(exc)
            raise

    def __exit__(self, exc_type: Any, exc: Any, _tb: Any) -> None:
        if not self.savepoint:
            # A failed COMMIT (SQLITE_FULL: the WAL could not grow) may leave the transaction
            # open: roll it back, so the next BEGIN works once there is room again.
            if exc_type is None:
                try:
                    self.db.execute("COMMIT")
                except sqlite3.Error as failed:
                    with contextlib.suppress(sqlite3.Error):
                        self.db.execute("ROLLBACK")
                    if self.on_done is not None:
                        self.on_done(failed)
                    raise
                if self.on_done is not None:
                    self.on_done(None)
                return
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            if self.on_done is not None and isinstance(exc, sqlite3.Error):
                self.on_done(exc)
        elif exc_type:
            if not self.db.in_transaction:
                return     # SQLite rolled the whole group back (SQLITE_FULL): exc stands
            self.db.execute("ROLLBACK TO store")
            self.db.execute("RELEASE store")
        else:
            self.db.execute("RELEASE store")
