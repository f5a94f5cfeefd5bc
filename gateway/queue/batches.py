"""Batches out: cut (oldest first, each node's records in seq order, priority records at
once), delivered per uplink (each its own cursor: batches go out in cut order), dead
letters, and the deletion of what every uplink has.

A batch is cut once: its id (the Idempotency-Key) and CBOR body are stored with it, so every
retry, also after a restart, sends the same key and the same bytes. Cutting concatenates the
records' stored maps after the batch's head (uplink_wire); nothing is written to the record
rows: per node, the batch takes every waiting record of a seq range (from the node's last cut
up to some seq at or below its ACK), and a delivered batch deletes its records by seq range.
The batch row keeps its (node, seq) list for the uplinks and after a restart.
"""

from __future__ import annotations

import builtins
import itertools
import time
import uuid
from collections.abc import Iterable

import cbor2

from .. import uplink_wire
from . import runs
from .core import QueueBase
from .runs import Piece
from .schema import ranges
from .types import Batch


def keys_of(blob: bytes) -> tuple[tuple[str, int], ...]:
    """A batch row's `keys` column: (node, seq) in batch order."""
    return tuple((node, seq) for node, seq in cbor2.loads(blob))


class Batches(QueueBase):
    """Cutting and delivering batches (see the module's docstring)."""

    def waiting(self, limit: int = 10_000) -> tuple[int, int, float | None]:
        """Records ready to be cut: count, their uplink bytes, and the receive time of the
        oldest (kept in memory: no query). `limit` is kept for callers; the count is exact."""
        w = self._waiting
        return w.count, w.nbytes, w.oldest()

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
        pieces: list[Piece] = []
        count = 0
        for node, upto in list(self._urgent.items()):
            lo = self._cut_upto.get(node, 0)
            hi = min(upto, self.ack_of(node))
            if hi <= lo or count >= max_records:
                continue
            for piece in self._read_pieces(node, lo, hi, max_records - count):
                pieces.append(piece)
                count += piece.hi - piece.lo + 1
        return self._cut(pieces, max_bytes, now)

    def _read_pieces(self, node: str, lo: int, hi: int, limit: int) -> list[Piece]:
        """Up to `limit` of `node`'s records in (lo, hi], in seq order, a piece per run."""
        out: list[Piece] = []
        for run in runs.overlapping(self._db, node, lo, hi):
            a = max(lo + 1, run.lo)
            b = min(hi, run.hi, a + limit - 1)
            if a > b:
                continue
            out.append(Piece(node, a, b, run))
            limit -= b - a + 1
            if limit <= 0:
                break
        return out

    def _cut(self, pieces: list[Piece], max_bytes: int, now: float | None) -> Batch | None:
        """A batch of a prefix of `pieces` (each node's in seq order) up to `max_bytes` (at
        least one record): the records' stored encodings after the batch's head, sliced from
        their runs a piece at a time. Persisted (id, body, keys); nothing is written to the
        records: the node's cut point now covers them."""
        now = time.time() if now is None else now
        created = int(now)
        batch_id = str(uuid.uuid4())
        head = uplink_wire.batch_head(batch_id, self.gateway_id, self.site, created)
        size = uplink_wire.batch_size(head)
        parts: list[bytes] = []
        keys: list[tuple[str, int]] = []
        budget = 0
        taken: dict[str, list[Piece]] = {}
        for piece in pieces:
            nbytes = piece.nbytes()
            full = size + nbytes <= max_bytes
            if not full:
                fit = piece.fitting(max_bytes - size)
                if fit == 0 and not keys:
                    fit = 1                     # a batch holds at least one record
                if fit == 0:
                    break
                piece = piece._replace(hi=piece.lo + fit - 1)
                nbytes = piece.nbytes()
            node = piece.node
            size += nbytes
            budget += piece.budget()
            parts.append(piece.recs())
            keys.extend(zip(itertools.repeat(node), range(piece.lo, piece.hi + 1)))
            per_node = taken.get(node)
            if per_node is None:
                per_node = taken[node] = []
            per_node.append(piece)
            if not full:
                break
        if not keys:
            return None
        body = uplink_wire.batch_body(head, parts, len(keys))
        with self._transaction():
            self._db.execute("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?)",
                             (batch_id, created, len(keys), body, cbor2.dumps(keys), budget))
        self._pending += 1
        self._bytes += len(body)
        for node, per_node in taken.items():   # in seq order per node
            self._cut_upto[node] = per_node[-1].hi
            self._waiting.consume(node, [(pc.lo, pc.hi, pc.run) for pc in per_node])
        return Batch(batch_id, created, tuple(keys), body)

    def _candidates(self, limit: int) -> list[Piece]:
        """Up to `limit` waiting records, oldest first, each node's in seq order, as pieces.

        The nodes' segments are merged in memory by their running max of receive times
        (which never decreases along a node's seqs, so taking a prefix of the merge keeps
        every node's records in order; ties go by node id); then each node's part is read in
        one range query, and the parts are interleaved in merge order (a piece split where
        the merge moves to another node).
        """
        plan, take = self._waiting.plan(limit)
        parts: dict[str, list[Piece]] = {}
        for node, (n, hi) in take.items():
            parts[node] = self._read_pieces(node, self._cut_upto.get(node, 0), hi, n)[::-1]
        out: list[Piece] = []
        for node, n in plan:
            stack = parts[node]            # the node's pieces, next one last
            while n > 0 and stack:
                piece = stack.pop()
                k = piece.hi - piece.lo + 1
                if k > n:                  # the rest of it comes later in the merge
                    stack.append(piece._replace(lo=piece.lo + n))
                    piece = piece._replace(hi=piece.lo + n - 1)
                    k = n
                out.append(piece)
                n -= k
        return out

    def pending_batches(self) -> list[Batch]:
        """Batches cut and not yet delivered everywhere, oldest first (after a restart too)."""
        return [Batch(bid, created, keys_of(keys), body) for bid, created, body, keys in
                self._db.execute("SELECT id, created, body, keys FROM batches ORDER BY rowid")]

    def next_pending(self, uplink: str) -> Batch | None:
        """The oldest batch `uplink` has not delivered yet (batches go out in cut order)."""
        row = self._db.execute(
            "SELECT id, created, body, keys FROM batches b WHERE NOT EXISTS (SELECT 1 FROM"
            " deliveries d WHERE d.batch = b.id AND d.uplink = ?) ORDER BY rowid LIMIT 1",
            (uplink,)).fetchone()
        if row is None:
            return None
        return Batch(row[0], row[1], keys_of(row[3]), row[2])

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
        deleted = sum(runs.remove(self._db, node, lo, hi)[0]
                      for node, lo, hi in ranges(cbor2.loads(row[0])))
        self._db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
        self._db.execute("DELETE FROM deliveries WHERE batch = ?", (batch_id,))
        self._pending -= 1
        self._bytes -= row[1] + row[2]
        if self._bytes < self.max_bytes:
            self.backpressure = False
        self._depth -= deleted
        return deleted
