"""Layout 3: the stored records as runs, one row per run of a node's contiguous seqs (as a
RECORDS message brought them): the records' uplink maps concatenated (`recs`) and, per record,
where its map ends in `recs`, its budget size and its flags (`meta`). Cutting splices a run's
bytes; deleting a batch's range, or evicting, removes whole runs and rewrites the one or two
runs it cuts through (`remove`)."""

from __future__ import annotations

import bisect
import sqlite3
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from .. import protocol

RUNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    node TEXT NOT NULL,
    lo INTEGER NOT NULL,         -- the first seq of the run
    hi INTEGER NOT NULL,         -- the last (hi - lo + 1 records, contiguous seqs)
    pri INTEGER NOT NULL,        -- the highest seq of a PRIORITY record in it, 0 if none
    received REAL NOT NULL,      -- gateway time when stored (batch age, eviction order)
    size INTEGER NOT NULL,       -- the sum of its records' sizes ([queue] max_bytes)
    recs BLOB NOT NULL,          -- the records' uplink maps (CBOR), concatenated in seq order
    meta BLOB NOT NULL,          -- per record: end of its map in recs, size, flags (u32 LE)
    PRIMARY KEY (node, lo)
);
-- Eviction candidates: runs without a PRIORITY record, oldest first.
CREATE INDEX IF NOT EXISTS runs_evict ON runs (received) WHERE pri = 0;
"""

_SWAP = sys.byteorder != "little"
# A run's maps are cut into rows of at most about this many bytes: a row then fits in one
# page of the (rowid) table, so a damaged page costs only its own records (queue_recovery).
RUN_BYTES = 3000


def pack_meta(values: list[int]) -> bytes:
    a = array("I", values)
    if _SWAP:
        a.byteswap()
    return a.tobytes()


def unpack_meta(blob: bytes) -> array:
    a = array("I")
    a.frombytes(blob)
    if _SWAP:
        a.byteswap()
    return a


@dataclass(slots=True)
class Run:
    node: str
    lo: int
    hi: int
    pri: int
    received: float
    size: int
    recs: bytes
    meta: array

    def start(self, seq: int) -> int:
        i = seq - self.lo
        return self.meta[3 * i - 3] if i else 0

    def end(self, seq: int) -> int:
        return self.meta[3 * (seq - self.lo)]

    def records(self, lo: int, hi: int) -> Iterator[tuple[int, int, int, bytes]]:
        """(seq, size, flags, rec) of the run's records in [lo, hi]."""
        lo, hi = max(lo, self.lo), min(hi, self.hi)
        meta, recs = self.meta, self.recs
        start = self.start(lo)
        for seq in range(lo, hi + 1):
            i = 3 * (seq - self.lo)
            end = meta[i]
            yield seq, meta[i + 1], meta[i + 2], recs[start:end]
            start = end


class Piece(NamedTuple):
    """Records lo..hi (contiguous) of one run, on their way into a batch: cutting takes them
    by the piece (slices of the run's bytes and sizes), not record by record."""

    node: str
    lo: int
    hi: int
    run: Run

    def nbytes(self) -> int:
        """Bytes of the records' maps."""
        return self.run.end(self.hi) - self.run.start(self.lo)

    def budget(self) -> int:
        """Their budget sizes added up (what max_bytes counts)."""
        i = 3 * (self.lo - self.run.lo)
        return sum(self.run.meta[i + 1:3 * (self.hi - self.run.lo) + 2:3])

    def fitting(self, room: int) -> int:
        """How many of the records, from `lo` on, have maps of at most `room` bytes in all."""
        i, start = 3 * (self.lo - self.run.lo), self.run.start(self.lo)
        ends = self.run.meta[i:3 * (self.hi - self.run.lo) + 1:3]
        return bisect.bisect_right(ends, start + room)

    def recs(self) -> bytes:
        """The records' maps, concatenated."""
        return self.run.recs[self.run.start(self.lo):self.run.end(self.hi)]


_COLS = "node, lo, hi, pri, received, size, recs, meta"


def _run(row: tuple) -> Run:
    return Run(row[0], row[1], row[2], row[3], row[4], row[5], row[6], unpack_meta(row[7]))


def row_of(node: str, received: float, items: list[tuple[int, int, int, bytes]]) -> tuple:
    """The row of a run of (seq, size, flags, rec), contiguous seqs in order."""
    meta: list[int] = []
    end = size = pri = 0
    for seq, rsize, flags, rec in items:
        end += len(rec)
        size += rsize
        meta += (end, rsize, flags)
        if flags & protocol.FLAG_PRIORITY:
            pri = seq
    return (node, items[0][0], items[-1][0], pri, received, size,
            b"".join(item[3] for item in items), pack_meta(meta))


def split(items: list[tuple[int, int, int, bytes]]) -> list[list[tuple[int, int, int, bytes]]]:
    """`items` (seq ascending) cut where the seqs are not contiguous, and into rows of
    at most about RUN_BYTES."""
    out: list[list[tuple[int, int, int, bytes]]] = []
    part: list[tuple[int, int, int, bytes]] = []
    prev = -2                   # seqs are >= 1: the first item starts a part
    nbytes = 0
    for item in items:
        n = len(item[3])
        if item[0] != prev + 1 or nbytes + n > RUN_BYTES:
            part = []
            out.append(part)
            nbytes = 0
        part.append(item)
        nbytes += n
        prev = item[0]
    return out


def insert(db: sqlite3.Connection, node: str, received: float,
           items: list[tuple[int, int, int, bytes]],
           parts: list[list[tuple[int, int, int, bytes]]] | None = None) -> None:
    """Store (seq, size, flags, rec) of `node` (ascending seqs, none of them stored yet);
    `parts`: split(items), when the caller has it already."""
    db.executemany(f"INSERT INTO runs ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   [row_of(node, received, part) for part in parts or split(items)])


def overlapping(db: sqlite3.Connection, node: str, lo: int, hi: int) -> list[Run]:
    """The runs of `node` holding a seq in (lo, hi], in seq order."""
    if hi <= lo:
        return []
    rows = db.execute(
        f"SELECT {_COLS} FROM runs WHERE node = ? AND lo <= ? AND lo >= coalesce((SELECT"
        " max(lo) FROM runs WHERE node = ? AND lo <= ?), -1) ORDER BY lo",
        (node, hi, node, lo + 1)).fetchall()
    return [_run(r) for r in rows if r[2] > lo]


def spans(db: sqlite3.Connection, node: str, above: int) -> list[tuple[int, int]]:
    """(lo, hi) of the node's runs holding a seq above `above`, in seq order."""
    return [(lo, hi) for lo, hi in db.execute(
        "SELECT lo, hi FROM runs WHERE node = ? AND lo >= coalesce((SELECT max(lo) FROM runs"
        " WHERE node = ? AND lo <= ?), -1) ORDER BY lo", (node, node, above + 1)) if hi > above]


def remove(db: sqlite3.Connection, node: str, lo: int, hi: int) -> tuple[int, int]:
    """Delete `node`'s records with seq in [lo, hi] (the runs it cuts through are rewritten
    with what is left of them); returns (records, their sizes)."""
    count = size = 0
    for run in overlapping(db, node, lo - 1, hi):
        db.execute("DELETE FROM runs WHERE node = ? AND lo = ?", (node, run.lo))
        keep_left = list(run.records(run.lo, lo - 1)) if run.lo < lo else []
        keep_right = list(run.records(hi + 1, run.hi)) if run.hi > hi else []
        for part in (keep_left, keep_right):
            if part:
                db.execute(f"INSERT INTO runs ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           row_of(node, run.received, part))
        gone = min(hi, run.hi) - max(lo, run.lo) + 1
        count += gone
        size += run.size - sum(r[1] for r in keep_left) - sum(r[1] for r in keep_right)
    return count, size


def read(db: sqlite3.Connection, node: str | None = None, lo: int = 0,
         hi: int | None = None) -> list[tuple[str, int, float, bytes]]:
    """(node, seq, received, rec) of the stored records (of `node`, seq in (lo, hi]), in
    (node, seq) order."""
    top = (1 << 63) - 1 if hi is None else hi
    if node is None:
        nodes = [n for (n,) in db.execute("SELECT DISTINCT node FROM runs ORDER BY node")]
    else:
        nodes = [node]
    out: list[tuple[str, int, float, bytes]] = []
    for n in nodes:
        for run in overlapping(db, n, lo, top):
            out.extend((n, seq, run.received, rec)
                       for seq, _size, _flags, rec in run.records(lo + 1, top))
    return out
