"""Records in: a RECORDS payload decoded and validated on the writer thread (store_message),
store (dedup by (node, seq), gaps and the `from` rule, the ACK), group commit, eviction and
backpressure, the port bindings. Every store commits (synchronous=FULL) before its result, the
ACK to send, is returned."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .. import protocol
from ..errors import ProtocolError, QueueError, QueueFullError
from ..storage_health import DISK_RESERVE, budget
from . import runs
from .core import QueueBase
from .schema import RECORD_OVERHEAD
from .types import REFUSED_JUMP, REFUSED_RESUME, Incoming, NodeInfo, Outcome, StoreResult
from .waiting import Segment

log = logging.getLogger("roadside.gateway.queue")

R = TypeVar("R")
EVICT_LOG_S = 10.0
INT64_MAX = (1 << 63) - 1


class Intake(QueueBase):
    """Storing records (see the module's docstring)."""

    def store_many(self, items: list[tuple]) -> list[StoreResult | Exception]:
        """Several store() calls (their argument tuples) in one transaction (_one_commit)."""
        return self._one_commit(items, lambda args: self.store(*args))

    def store_messages(self, items: list[Incoming]) -> list[Outcome | Exception]:
        """The group method of the writer thread: RECORDS payloads of several sessions decoded,
        validated and stored in one transaction (_one_commit), each with its Outcome; a
        malformed one gets its ProtocolError (the session answers ERROR), alone."""
        return self._one_commit(items, self.store_message)

    def store_message(self, item: Incoming) -> Outcome:
        """One RECORDS payload of a node's session: decode and validate it (a ProtocolError
        says what to answer), refuse seqs of a lost counter and a `from` beyond any journal
        (PROTOCOL.md 2.2, 2.5), store the records. Anything else decoded is handed back."""
        msg = protocol.decode_message(item.payload)
        if not isinstance(msg, protocol.Records):
            return Outcome(msg)
        ack = self.ack_of(item.node)
        if item.resume is not None and msg.from_seq < item.resume:
            return Outcome(msg, refused=REFUSED_RESUME, ack=ack)
        if msg.from_seq - 1 > ack + protocol.MAX_SEQ_JUMP:
            return Outcome(msg, refused=REFUSED_JUMP, ack=ack)
        try:
            result = self.store(item.node, item.role, msg.records, msg.from_seq,
                                item.received)
        except QueueError as exc:
            exc.records = msg             # the session logs its seqs
            raise
        return Outcome(msg, result, ack=result.ack)

    def _one_commit(self, items: list[Any], store: Callable[[Any], R]) -> list[R | Exception]:
        """`store` of each item in one transaction: each in its own savepoint (a refused one,
        e.g. QueueFullError, leaves the others stored), one COMMIT for all. Nothing is
        returned before that COMMIT, so an ACK still follows a durable commit."""
        results: list[R | Exception] = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise QueueError(f"cannot store records: {exc}") from exc
        self._in_group = True
        try:
            for item in items:
                try:
                    results.append(store(item))
                except ProtocolError as exc:
                    results.append(exc)        # decoded before anything was written
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
                    node = _node_of(item)
                    log.error(f"cannot store records of {node}: {exc!r}")
                    results.append(QueueError(f"cannot store records of {node}: {exc}"))
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

    def greet(self, node: str, role: str, first_unacked: int, now: float,
              bind_port: str | None = None) -> tuple[StoreResult, int]:
        """A node said HELLO: remember the port's node (`bind_port`, new or accepted), apply
        its `from` (hello()); returns the ACK and the node's highest stored seq."""
        if bind_port is not None:
            self.bind_port(bind_port, node)
        return self.hello(node, role, first_unacked, now), self.highest_seq(node)

    def highest_seq(self, node: str) -> int:
        """The highest seq of `node` this queue ever stored: its ACK, or a record held beyond
        a gap (a node whose counter is not above it would reuse seqs; PROTOCOL.md 2.2)."""
        row = self._db.execute("SELECT hi FROM runs WHERE node = ? ORDER BY lo DESC LIMIT 1",
                               (node,)).fetchone()
        return max(self.ack_of(node), row[0] if row else 0)

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
        ack = old_ack = info.ack
        items = self._items(node, role, records, ack, now)
        # Records beyond a gap are held in runs above the ACK: those seqs are duplicates too.
        held = runs.spans(self._db, node, ack)
        seqs = [it[0] for it in items]
        if held or seqs != list(range(seqs[0], seqs[0] + len(seqs)) if seqs else []):
            seen: set[int] = set()
            keep = []
            for it in sorted(items, key=lambda it: it[0]):
                seq = it[0]
                if seq in seen or any(lo <= seq <= hi for lo, hi in held):
                    continue
                seen.add(seq)
                keep.append(it)
            items = keep
        stored = len(items)
        dups = len(records) - stored
        if items and self._depth + stored > self.max_depth:
            raise QueueFullError(f"queue holds {self._depth} records (max {self.max_depth})")
        incoming = sum(it[1] for it in items)
        evict, freed = self._eviction(node, ack, incoming)
        try:
            with self._transaction():
                if from_seq > INT64_MAX:
                    raise OverflowError(f"from {from_seq} is beyond SQLite's integers")
                evicted = 0
                for n, lo, hi in evict:
                    evicted += runs.remove(self._db, n, lo, hi)[0]
                self._bump("evicted", evicted)
                parts = runs.split(items)
                if items:
                    runs.insert(self._db, node, now, items, parts)
                spans = sorted(held + [(part[0][0], part[-1][0]) for part in parts])
                gaps = 0
                if from_seq - 1 > ack:
                    kept = sum(max(0, min(hi, from_seq - 1) - max(lo, ack + 1) + 1)
                               for lo, hi in spans)
                    gaps = from_seq - 1 - ack - kept
                    ack = from_seq - 1
                for lo, hi in spans:           # the ACK runs on along contiguous runs
                    if lo > ack + 1:
                        break
                    ack = max(ack, hi)
                segments = []
                if ack > info.ack:     # newly waiting: the records in (old ACK, ACK]
                    if not held and stored == ack - info.ack and \
                            items and items[0][0] == info.ack + 1:
                        segments = [Segment(ack, now, stored, sum(len(it[3]) for it in items),
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
        for n in {n for n, _lo, _hi in evict}:
            n_ack = old_ack if n == node else self.ack_of(n)
            self._waiting.replace(n, self._query_segments(n, self._cut_upto.get(n, 0), n_ack))
        self._waiting.add(node, segments)
        self._depth += stored - evicted
        self._bytes += incoming - freed
        if items:
            self.backpressure = False
        if evict:
            self._log_evicted(evicted, now)
        urgent = [it[0] for it in items if it[2] & protocol.FLAG_PRIORITY]
        if urgent:
            self._urgent[node] = max(self._urgent.get(node, 0), *urgent)
        return StoreResult(stored, dups, ack, gaps)

    def _items(self, node: str, role: str, records: list[protocol.Record], ack: int,
               now: float) -> list[tuple[int, int, int, bytes]]:
        """(seq, size, flags, rec) of the records beyond `ack`, `rec` being the record's
        uplink map encoded once, here (uplink_wire)."""
        base = len(node) + len(role) + RECORD_OVERHEAD
        return [(seq, length + base, flags, rec) for seq, flags, length, rec in
                self._encoder.records(node, role, records, ack, now)]

    def _eviction(self, node: str, ack: int,
                  incoming: int) -> tuple[list[tuple[str, int, int]], int]:
        """The records to evict so that `incoming` bytes fit the budget: plain telemetry not
        yet in a batch (a cut batch keeps its exact bytes), oldest first, only at or below its
        node's ACK (a record beyond a gap is needed to advance the ACK). Raises QueueFullError
        (backpressure) when even evicting all of them would not make room. A run stored
        with a PRIORITY record is kept whole (its telemetry too); a run is evicted from its
        oldest seq on, as far as needed."""
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
        for n, lo, hi, meta in self._db.execute(
                "SELECT node, lo, hi, meta FROM runs WHERE pri = 0 ORDER BY received"):
            a = max(lo, cut.get(n, 0) + 1)
            b = min(hi, ack if n == node else self.ack_of(n))
            if a > b:
                continue
            sizes = runs.unpack_meta(meta)
            last = a
            for seq in range(a, b + 1):
                freed += sizes[3 * (seq - lo) + 1]
                last = seq
                if freed >= need:
                    break
            evict.append((n, a, last))
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


def _node_of(item: Any) -> str:
    """The node an item of _one_commit is for (an Incoming, or store()'s argument tuple)."""
    return item.node if isinstance(item, Incoming) else str(item[0])
