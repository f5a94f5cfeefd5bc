"""The queue's state and plumbing: the file, its in-memory mirror, the writer thread
(writer.py), transactions. Intake (intake.py) and Batches (batches.py) build on it; Queue
(gateway/queue/__init__.py) is both; the event loop uses it through aio.py."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import cbor2

from ..errors import QueueError
from ..storage_health import Storage
from ..uplink_wire import RecordEncoder
from . import runs, schema
from .tx import Transaction
from .types import Incoming, NodeInfo, Outcome
from .waiting import Segment, Waiting
from .writer import Writer

T = TypeVar("T")
log = logging.getLogger("roadside.gateway.queue")

# Back-pressure bound: beyond this the session answers ERROR 6 (busy) and the node keeps its
# journal; far above anything a site produces while the backend is reachable.
DEFAULT_MAX_DEPTH = 5_000_000
# The disk budget ([queue] max_bytes): bytes of queued records and cut batches, counted as
# each record's `size` (its `data` CBOR + node id + role + RECORD_OVERHEAD, kept in its row)
# plus each batch body. Beyond it plain telemetry not yet cut is
# evicted oldest-first; PRIORITY records never are: when only they remain, store() refuses
# (QueueFullError: the session answers ERROR 6 busy and the nodes keep them: backpressure).
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# At most this many RECORDS messages in one group commit (Intake.store_messages).
GROUP_MAX = 256


class QueueBase:
    """The SQLite queue's state. Methods are synchronous and run on the writer thread; the
    event loop awaits them through `aio` (aio.AsyncQueue)."""

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
        self._encoder = RecordEncoder()          # record maps, encoded once when stored
        try:
            self._db = schema.connect(self.path)
            schema.open_schema(self._db, self.path)
            self._db.execute(schema.PORTS_SCHEMA)
            for name in schema.COUNTERS:
                self._db.execute("INSERT OR IGNORE INTO counters VALUES (?, 0)", (name,))
            self._load_state()
        except sqlite3.Error as exc:
            damaged = "" if isinstance(exc, sqlite3.OperationalError) else (
                "; the file is damaged: `roadside gateway run` moves it aside and re-queues"
                " every readable record (docs/GATEWAY.md, damaged queue file)")
            raise QueueError(f"cannot open the queue {self.path}: {exc}{damaged}") from exc
        self._in_group = False         # in one commit (store_many): stores use savepoints
        self._writer = Writer(self.store_messages, GROUP_MAX)

    def _load_state(self) -> None:
        """The in-memory mirror of the file (at open, and after a failed group commit)."""
        self.nodes: dict[str, NodeInfo] = {
            row[0]: NodeInfo(*row) for row in self._db.execute(
                "SELECT node, ack, role, stored, duplicates, gaps, last_seen FROM nodes")
        }
        self.counters: dict[str, int] = dict(
            self._db.execute("SELECT name, value FROM counters").fetchall())
        self._depth = self._db.execute(
            "SELECT coalesce(sum(hi - lo + 1), 0) FROM runs").fetchone()[0]
        self._pending = self._db.execute("SELECT count(*) FROM batches").fetchone()[0]
        self._bytes = self._db.execute(
            "SELECT coalesce(sum(size), 0) FROM runs").fetchone()[0] \
            + self._db.execute("SELECT coalesce(sum(length(body)), 0) FROM batches").fetchone()[0]
        # Per node, the highest seq already cut into a batch: every record of the node at or
        # below it is in a pending batch (or gone), every one above it waits. A node with no
        # pending batch has all its records waiting (0).
        self._cut_upto: dict[str, int] = {}
        for (keys,) in self._db.execute("SELECT keys FROM batches"):
            for node, _lo, hi in schema.ranges(cbor2.loads(keys)):
                if hi > self._cut_upto.get(node, 0):
                    self._cut_upto[node] = hi
        # Per node, the newest PRIORITY record not yet cut: the batcher cuts it at once.
        self._urgent: dict[str, int] = {
            node: seq for node, seq in self._db.execute(
                "SELECT node, max(pri) FROM runs WHERE pri > 0 GROUP BY node")
            if seq > self._cut_upto.get(node, 0)}
        # Per node, its waiting records (waiting.py): cutting and waiting() need no query.
        self._waiting = Waiting(self._query_segments, self._cut_upto)
        for node, info in self.nodes.items():
            self._waiting.add(node, self._query_segments(
                node, self._cut_upto.get(node, 0), info.ack))


    def stored(self, node: str | None = None, lo: int = 0,
               hi: int | None = None) -> list[tuple[str, int, float, bytes]]:
        """(node, seq, received, rec) of the records in the file (schema.read_records)."""
        return schema.read_records(self._db, node, lo, hi)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a queue method on the writer thread (tests, keep_trying; the daemon's parts use
        `aio`)."""
        result: T = await self._writer.submit(fn, *args)
        return result

    def store_messages(self, items: list[Incoming]) -> list[Outcome | Exception]:
        """Intake.store_messages (the writer thread's group method)."""
        raise NotImplementedError

    def close(self) -> None:
        self._writer.close()
        self._db.close()

    def _bump(self, name: str, by: int) -> None:
        if by:
            self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))
            self.counters[name] += by

    def _transaction(self) -> Transaction:
        return Transaction(self._db, savepoint=self._in_group, on_done=self._committed)

    def _committed(self, exc: BaseException | None) -> None:
        """After a transaction: it committed (exc None), or a storage error rolled it back,
        so the in-memory mirror (changed inside it by _delete_batch) is read again."""
        if exc is None:
            self.storage.committed()
            return
        self.storage.failed(f"cannot commit: {exc}")
        with contextlib.suppress(sqlite3.Error):
            self._load_state()

    def ack_of(self, node: str) -> int:
        info = self.nodes.get(node)
        return info.ack if info else 0

    def depth(self) -> int:
        """Records held and not yet delivered (waiting, in pending batches, beyond gaps)."""
        return self._depth

    def bytes(self) -> int:
        """Bytes counted against [queue] max_bytes (records and cut batches)."""
        return self._bytes

    def _reload_node(self, node: str) -> None:
        row = self._db.execute("SELECT node, ack, role, stored, duplicates, gaps, last_seen"
                               " FROM nodes WHERE node = ?", (node,)).fetchone()
        if row:
            self.nodes[node] = NodeInfo(*row)

    def _query_segments(self, node: str, lo: int, hi: int) -> list[Segment]:
        """Segments of the node's records in (lo, hi] (runs of equal running-max receive time;
        the running max starts at `lo`: add_segments continues it from the node's last)."""
        if hi <= lo:
            return []
        segs: list[Segment] = []
        eff = None
        for run in runs.overlapping(self._db, node, lo, hi):
            a, b = max(lo + 1, run.lo), min(hi, run.hi)
            nbytes = run.end(b) - run.start(a)
            got = run.received
            eff = got if eff is None or got > eff else eff
            if segs and segs[-1].eff == eff:
                seg = segs[-1]
                seg.hi = b
                seg.count += b - a + 1
                seg.nbytes += nbytes
                seg.oldest = min(seg.oldest, got)
                seg.newest = max(seg.newest, got)
            else:
                segs.append(Segment(b, eff, b - a + 1, nbytes, got, got))
        return segs
