"""Records in: store (dedup by (node, seq), gaps and the `from` rule, the ACK), group
commit, eviction and backpressure, the port bindings. Every store commits
(synchronous=FULL) before its result, the ACK to send, is returned."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from .. import protocol
from ..errors import QueueError, QueueFullError
from ..storage_health import DISK_RESERVE, budget
from .core import QueueBase
from .schema import RECORD_OVERHEAD
from .types import NodeInfo, StoreResult
from .waiting import Segment

log = logging.getLogger("roadside.gateway.queue")

EVICT_LOG_S = 10.0
# At most this many RECORDS messages in one group commit (store_many).
GROUP_MAX = 256


class Intake(QueueBase):
    """Storing records (see the module's docstring)."""

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
                        segments = [Segment(ack, now, stored, sum(len(r[5]) for r in rows),
                                            now, now)]
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
        for n, seq, _length in evict:
            self._waiting.unwait(n, seq)
        self._waiting.add(node, segments)
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
        rec), `rec` being the record's uplink map encoded once, here (uplink_wire)."""
        base = len(node) + len(role) + RECORD_OVERHEAD
        return [(node, seq, flags, now, length + base, rec) for seq, flags, length, rec in
                self._encoder.records(node, role, records, ack, now)]

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
