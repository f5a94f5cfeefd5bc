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
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import cbor2

from . import protocol
from .errors import QueueError, QueueFullError

T = TypeVar("T")
log = logging.getLogger("roadside.gateway.queue")

# synchronous=FULL: in WAL mode every commit is fsynced, so an ACK promises the record
# survives a power cut, not only a crashed process (NORMAL would survive kill -9 but could
# lose the last commits on power loss, and the node would already have dropped them).
SYNCHRONOUS = "FULL"

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    node TEXT NOT NULL,
    seq INTEGER NOT NULL,
    t INTEGER NOT NULL,          -- epoch s; the gateway's receive time when not synced
    kind INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    role TEXT NOT NULL,
    synced INTEGER NOT NULL,
    data BLOB NOT NULL,          -- CBOR of the body with named keys (uplink `data`)
    received REAL NOT NULL,      -- gateway time when stored (batch age)
    batch TEXT,                  -- the batch it was cut into, NULL while waiting
    bpos INTEGER,                -- position in that batch
    PRIMARY KEY (node, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_batch ON records (batch, bpos);
-- Eviction candidates: plain telemetry (PRIORITY = 2 clear) not yet cut, oldest first.
CREATE INDEX IF NOT EXISTS records_evict ON records (received)
    WHERE batch IS NULL AND flags & 2 = 0;
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
    body BLOB NOT NULL           -- the exact CBOR POST body
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

COUNTERS = ("duplicates", "gaps", "delivered_records", "delivered_batches", "dead_letters",
            "evicted")
# Back-pressure bound: beyond this the session answers ERROR 6 (busy) and the node keeps its
# journal; far above anything a site produces while the backend is reachable.
DEFAULT_MAX_DEPTH = 5_000_000
# The disk budget ([queue] max_bytes): bytes of queued records and cut batches, counted as
# RECORD_SIZE_SQL per record plus each batch body. Beyond it plain telemetry not yet cut is
# evicted oldest-first; PRIORITY records never are: when only they remain, store() refuses
# (QueueFullError: the session answers ERROR 6 busy and the nodes keep them: backpressure).
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
RECORD_OVERHEAD = 48     # key, integers and b-tree bookkeeping per row, roughly
RECORD_SIZE_SQL = f"(length(data) + length(node) + length(role) + {RECORD_OVERHEAD})"
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


# Encoded pieces of an uplink record map (8 pairs, keys in this order), for Queue._cut.
_REC_NODE = b"\xa8" + cbor2.dumps("node")
_REC_SEQ, _REC_T, _REC_KIND, _REC_ROLE, _REC_SYNCED, _REC_PRIORITY, _REC_DATA = (
    cbor2.dumps(k) for k in ("seq", "t", "kind", "role", "synced", "priority", "data"))
_TRUE, _FALSE = cbor2.dumps(True), cbor2.dumps(False)
_KIND_ENC = {k: cbor2.dumps(name) for k, name in protocol.KIND_NAMES.items()}


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
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(SCHEMA)
            for name in COUNTERS:
                self._db.execute("INSERT OR IGNORE INTO counters VALUES (?, 0)", (name,))
        except sqlite3.Error as exc:
            raise QueueError(f"cannot open the queue {self.path}: {exc}") from exc
        self._load_state()
        self._in_group = False         # store_many(): stores use savepoints in one commit
        self._group: list[tuple[tuple, asyncio.Future[StoreResult]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue")

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
            f"SELECT coalesce(sum({RECORD_SIZE_SQL}), 0) FROM records").fetchone()[0] \
            + self._db.execute("SELECT coalesce(sum(length(body)), 0) FROM batches").fetchone()[0]
        # Per node, the highest seq already cut into a batch (all below are cut or gone).
        self._cut_upto: dict[str, int] = dict(self._db.execute(
            "SELECT node, max(seq) FROM records WHERE batch IS NOT NULL GROUP BY node"))
        # Per node, the newest PRIORITY record not yet cut: the batcher cuts it at once.
        self._urgent: dict[str, int] = dict(self._db.execute(
            "SELECT node, max(seq) FROM records WHERE batch IS NULL AND flags & ? != 0"
            " GROUP BY node", (protocol.FLAG_PRIORITY,)))

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
        return _Tx(self._db, savepoint=self._in_group)

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
                    results.append(exc)
            self._in_group = False
            self._db.execute("COMMIT")
        except BaseException as exc:
            self._in_group = False
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self._load_state()     # the stores above changed the mirror; the file did not
            if isinstance(exc, sqlite3.Error):
                raise QueueError(f"cannot commit stored records: {exc}") from exc
            raise
        return results

    # -- records in ------------------------------------------------------------------------

    def ack_of(self, node: str) -> int:
        info = self.nodes.get(node)
        return info.ack if info else 0

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
        rows = []
        dups = 0
        t_now = int(now)
        for r in records:
            if r.seq <= ack:
                dups += 1
                continue
            synced = r.synced
            rows.append((node, r.seq, r.t if synced else t_now, r.kind, r.flags, role,
                         int(synced), cbor2.dumps(protocol.body_to_data(r.kind, r.body)), now))
        if rows and self._depth + len(rows) > self.max_depth:
            raise QueueFullError(f"queue holds {self._depth} records (max {self.max_depth})")
        incoming = sum(len(r[7]) + len(node) + len(role) + RECORD_OVERHEAD for r in rows)
        evict, freed = self._eviction(node, ack, incoming)
        try:
            with self._transaction():
                if evict:
                    self._db.executemany("DELETE FROM records WHERE node = ? AND seq = ?",
                                         evict)
                    self._bump("evicted", len(evict))
                stored = 0
                if rows:
                    cur = self._db.executemany(
                        "INSERT OR IGNORE INTO records (node, seq, t, kind, flags, role, synced,"
                        " data, received) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
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
        except sqlite3.Error as exc:
            if not fresh:
                self._reload_node(node)
            raise QueueError(f"cannot store records of {node}: {exc}") from exc
        self.nodes[node] = info
        self._depth += stored - len(evict)
        self._bytes += incoming - freed
        if rows:
            self.backpressure = False
        if evict:
            self._log_evicted(len(evict), now)
        urgent = [r[1] for r in rows if r[4] & protocol.FLAG_PRIORITY]
        if urgent and stored:
            self._urgent[node] = max(self._urgent.get(node, 0), *urgent)
        return StoreResult(stored, dups, ack, gaps)

    def _eviction(self, node: str, ack: int, incoming: int) -> tuple[list[tuple[str, int]], int]:
        """The records to evict so that `incoming` bytes fit the budget: plain telemetry not
        yet in a batch (a cut batch keeps its exact bytes), oldest first, only at or below its
        node's ACK (a record beyond a gap is needed to advance the ACK). Raises QueueFullError
        (backpressure) when even evicting all of them would not make room."""
        need = self._bytes + incoming - self.max_bytes
        if incoming == 0 or need <= 0:
            return [], 0
        evict: list[tuple[str, int]] = []
        freed = 0
        for n, seq, size in self._db.execute(
                f"SELECT node, seq, {RECORD_SIZE_SQL} FROM records"
                " WHERE batch IS NULL AND flags & 2 = 0 ORDER BY received"):
            if seq > (ack if n == node else self.ack_of(n)):
                continue
            evict.append((n, seq))
            freed += size
            if freed >= need:
                return evict, freed
        self.backpressure = True
        raise QueueFullError(
            f"queue holds {self._bytes} bytes, [queue] max_bytes is {self.max_bytes} and only"
            f" priority records (never evicted) or batches being delivered are left")

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
        """Records ready to be cut: count, approximate uplink bytes, and the receive time of
        the oldest. Counting stops once `limit` records are found (enough to decide a cut; the
        size and oldest then cover the records counted), so with many nodes a full batch is
        seen without a query per node."""
        count, size, oldest = 0, 0, None
        for node, info in self.nodes.items():
            lo = self._cut_upto.get(node, 0)
            if info.ack <= lo:
                continue
            n, b, first = self._db.execute(
                "SELECT count(*), sum(length(data)), min(received) FROM (SELECT data, received"
                " FROM records WHERE node = ? AND seq > ? AND seq <= ? AND batch IS NULL"
                " ORDER BY seq LIMIT ?)", (node, lo, info.ack, limit - count)).fetchone()
            count += n
            size += (b or 0) + 110 * n   # ~110 bytes of keys, ids and numbers around data
            if first is not None and (oldest is None or first < oldest):
                oldest = first
            if count >= limit:
                break
        return count, size, oldest

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
                "SELECT received, node, seq, t, kind, flags, role, synced, data FROM records"
                " WHERE node = ? AND seq > ? AND seq <= ? AND batch IS NULL ORDER BY seq"
                " LIMIT ?", (node, lo, hi, max_records - len(rows))).fetchall())
        return self._cut(rows, max_bytes, now)

    def _cut(self, rows: list[tuple], max_bytes: int, now: float | None) -> Batch | None:
        """Encode a prefix of `rows` (each node's in seq order) up to `max_bytes`; persist it."""
        now = time.time() if now is None else now
        created = int(now)
        batch_id = str(uuid.uuid4())
        head = b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in (
            ("batch", batch_id), ("gateway", self.gateway_id), ("site", self.site),
            ("created", created))) + cbor2.dumps("records")
        size = 1 + len(head) + 9
        encoded: list[bytes] = []
        keys: list[tuple[str, int]] = []
        # Each record map is spliced from encoded parts (the stored `data` is already the CBOR
        # of its map): the same bytes as cbor2.dumps of the dict, without decoding `data`.
        dumps = cbor2.dumps
        texts: dict[str, bytes] = {}
        for _eff, node, seq, t, kind, flags, role, synced, data in rows:
            node_enc = texts.get(node) or texts.setdefault(node, dumps(node))
            role_enc = texts.get(role) or texts.setdefault(role, dumps(role))
            kind_enc = _KIND_ENC.get(kind) or dumps(protocol.kind_name(kind))
            enc = b"".join((
                _REC_NODE, node_enc, _REC_SEQ, dumps(seq), _REC_T, dumps(t), _REC_KIND,
                kind_enc, _REC_ROLE, role_enc, _REC_SYNCED, _TRUE if synced else _FALSE,
                _REC_PRIORITY, _TRUE if flags & protocol.FLAG_PRIORITY else _FALSE,
                _REC_DATA, data))
            if encoded and size + len(enc) > max_bytes:
                break
            size += len(enc)
            encoded.append(enc)
            keys.append((node, seq))
        if not keys:
            return None
        body = b"\xa5" + head + _uint_head(4, len(encoded)) + b"".join(encoded)
        with self._transaction():
            self._db.execute("INSERT INTO batches VALUES (?, ?, ?, ?)",
                             (batch_id, created, len(keys), body))
            self._db.executemany(
                "UPDATE records SET batch = ?, bpos = ? WHERE node = ? AND seq = ?",
                [(batch_id, i, n, s) for i, (n, s) in enumerate(keys)])
        self._pending += 1
        self._bytes += len(body)
        for node, seq in keys:   # keys are in seq order per node
            self._cut_upto[node] = seq
        return Batch(batch_id, created, tuple(keys), body)

    def _candidates(self, limit: int) -> list[tuple]:
        """Up to `limit` waiting records, oldest first, each node's in seq order.

        Per node the lowest waiting seqs (an index range scan from the last cut to the ACK);
        merged by the running max of their receive time, which never decreases along a
        node's seqs, so taking a prefix of the merge keeps every node's records in order.
        The per-node scans are read lazily, so with many nodes only about `limit` rows are
        read in all, not `limit` per node.
        """
        scans = []
        for node, info in self.nodes.items():
            lo = self._cut_upto.get(node, 0)
            if info.ack > lo:
                scans.append(self._scan(node, lo, info.ack, limit))
        try:
            merged = scans[0] if len(scans) == 1 else heapq.merge(*scans)
            return list(itertools.islice(merged, limit))
        finally:
            for scan in scans:
                scan.close()       # resets the statements before the cut's transaction

    def _scan(self, node: str, lo: int, hi: int, limit: int) -> sqlite3.Cursor:
        """One node's waiting records in (lo, hi], each keyed by the running max of the
        receive times up to it (computed by SQLite: a window over the seq order)."""
        return self._db.execute(
            "SELECT max(received) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING), node, seq, t,"
            " kind, flags, role, synced, data FROM records"
            " WHERE node = ? AND seq > ? AND seq <= ? AND batch IS NULL ORDER BY seq"
            " LIMIT ?", (node, lo, hi, limit))

    def pending_batches(self) -> list[Batch]:
        """Batches cut and not yet delivered everywhere, oldest first (after a restart too)."""
        out = []
        for bid, created, body in self._db.execute(
                "SELECT id, created, body FROM batches ORDER BY rowid").fetchall():
            keys = tuple(self._db.execute(
                "SELECT node, seq FROM records WHERE batch = ? ORDER BY bpos", (bid,)).fetchall())
            out.append(Batch(bid, created, keys, body))
        return out

    def next_pending(self, uplink: str) -> Batch | None:
        """The oldest batch `uplink` has not delivered yet (batches go out in cut order)."""
        row = self._db.execute(
            "SELECT id, created, body FROM batches b WHERE NOT EXISTS (SELECT 1 FROM deliveries"
            " d WHERE d.batch = b.id AND d.uplink = ?) ORDER BY rowid LIMIT 1",
            (uplink,)).fetchone()
        if row is None:
            return None
        keys = tuple(self._db.execute(
            "SELECT node, seq FROM records WHERE batch = ? ORDER BY bpos", (row[0],)).fetchall())
        return Batch(row[0], row[1], keys, row[2])

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

    def dead_letter_body(self, batch_id: str, uplink: str) -> bytes | None:
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
        size = self._db.execute(
            f"SELECT coalesce(sum({RECORD_SIZE_SQL}), 0) FROM records WHERE batch = ?",
            (batch_id,)).fetchone()[0] + (self._db.execute(
                "SELECT length(body) FROM batches WHERE id = ?", (batch_id,)).fetchone() or (0,))[0]
        cur = self._db.execute("DELETE FROM records WHERE batch = ?", (batch_id,))
        self._bytes -= size
        if self._bytes < self.max_bytes:
            self.backpressure = False
        if self._db.execute("DELETE FROM batches WHERE id = ?", (batch_id,)).rowcount:
            self._pending -= 1
        self._db.execute("DELETE FROM deliveries WHERE batch = ?", (batch_id,))
        self._depth -= cur.rowcount
        return cur.rowcount


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception; inside store_many() a
    SAVEPOINT ... RELEASE (or ROLLBACK TO) in the group's transaction."""

    def __init__(self, db: sqlite3.Connection, savepoint: bool = False) -> None:
        self.db = db
        self.savepoint = savepoint

    def __enter__(self) -> None:
        self.db.execute("SAVEPOINT store" if self.savepoint else "BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if not self.savepoint:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        elif exc_type:
            self.db.execute("ROLLBACK TO store")
            self.db.execute("RELEASE store")
        else:
            self.db.execute("RELEASE store")
