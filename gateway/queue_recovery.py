"""A damaged queue file: found at start, moved aside, every readable row re-queued.

`open_queue()` (the daemon's way to open the queue) runs SQLite's `PRAGMA quick_check` on the
file first (`integrity()`; `roadside gateway check` runs the same). A file that fails it -
truncated, overwritten with other bytes, a page garbled in the middle - is not refused: under
systemd a daemon that refuses to start crash-loops and the site goes dark, while the nodes'
journals and the file's readable part still hold the data. So it is recovered, loudly:

1. the file (and its -wal, -shm) is renamed to `queue.sqlite.damaged-YYYYmmddTHHMMSSZ` next to
   it, kept for the operator (it is never deleted);
2. every row still readable from it is copied into a fresh queue file: each node's state (its
   ACK, so the nodes are not asked again for what they already dropped), every record with its
   (node, seq) (so the queue's dedup still keeps each record once), the batches already cut
   (same id and body: a retry is still the same Idempotency-Key), deliveries, dead letters,
   port bindings and counters. A damaged page makes its rows unreadable; the scan skips over
   it and goes on with the next readable row;
3. the event is logged (an error line naming both files and what to do), counted
   (`roadside_queue_recovered_files_total`, `..._recovered_records_total`) and shown on
   /healthz (503 for a while) and /status.

Records a node sent again after a recovery are deduplicated by (node, seq) as always; records
lost with unreadable pages and above a node's ACK are asked for again from the node's journal
(its HELLO `from`), those at or below it are gone and counted as such in the report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import QueueError
from .queue import Queue

log = logging.getLogger("roadside.gateway.queue")

# The tables copied as they are (layout 3: all rowid tables), in this order.
TABLES = ("nodes", "batches", "deliveries", "dead_letters", "counters", "ports", "runs")
SKIP_MAX = 1 << 62
POINT_MAX = 1 << 20     # keys looked up one by one across one damaged part


def integrity(path: Path) -> str | None:
    """None when the queue file is sound (or absent), else one line saying what is wrong."""
    if not path.exists():
        return None
    if path.stat().st_size == 0:
        return None                     # a new, empty file: SQLite makes it a database
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return f"cannot open it: {exc}"
    try:
        rows = [r[0] for r in db.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        db.close()
    if rows == ["ok"]:
        return None
    return "; ".join(str(r) for r in rows)


def open_queue(path: Path, *args: Any, **kwargs: Any) -> Queue:
    """Open the queue at `path`; a damaged file is recovered first (see the module doc)."""
    problem = integrity(path)
    report = None
    if problem is not None:
        report = recover(path, problem)
    queue = Queue(path, *args, **kwargs)
    if report is not None:
        queue.storage.recovered.append(report)
    return queue


def recover(path: Path, problem: str) -> dict[str, Any]:
    """Move the damaged file aside and build a fresh one of its readable rows; returns the
    report ({"aside", "problem", "records", "nodes", "batches", "unreadable"})."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    log.error(f"queue {path} is damaged ({problem}): moving it aside to {aside} and"
              f" re-queueing every record still readable from it")
    try:
        for suffix in ("-wal", "-shm", ""):
            # -wal first: opening the moved file must not replay another file's WAL.
            src = Path(f"{path}{suffix}")
            if src.exists():
                os.replace(src, f"{aside}{suffix}")
    except OSError as exc:
        raise QueueError(f"queue {path} is damaged ({problem}) and cannot be moved aside:"
                         f" {exc.strerror}; move it away by hand (keep it) and start"
                         f" again") from exc
    report: dict[str, Any] = {"aside": str(aside), "problem": problem, "records": 0,
                              "nodes": 0, "batches": 0, "unreadable": 0}
    fresh = Queue(path)        # the schema of this gateway, empty
    try:
        _copy(aside, fresh, report)
    finally:
        fresh.close()
    log.error(f"queue {path}: recovered {report['records']} records of {report['nodes']} nodes"
              f" and {report['batches']} pending batches from {aside}"
              f" ({report['unreadable']} unreadable parts skipped); the damaged file is kept"
              f" there for inspection: delete it when no longer needed")
    return report


def _copy(aside: Path, fresh: Queue, report: dict[str, Any]) -> None:
    try:
        old = sqlite3.connect(f"file:{aside}?mode=ro", uri=True)
        # A truncated file is refused whole ("malformed": the header counts more pages than
        # the file has) unless the schema may be "writable"; reading its pages is then fine.
        old.execute("PRAGMA writable_schema = ON")
    except sqlite3.Error:
        report["unreadable"] += 1
        return
    db = fresh._db
    try:
        db.execute("BEGIN IMMEDIATE")
        for table in TABLES:
            cols = _columns(db, table)
            if not cols:
                continue
            rows = list(_scan_rowid(old, table, cols, report))
            if table == "counters":
                db.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?)", rows)
                continue
            marks = ", ".join("?" * len(cols))
            db.executemany(f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) VALUES ({marks})",
                           rows)
            if table in ("nodes", "batches"):
                report[table] = len(rows)
            elif table == "runs":
                lo_at, hi_at = cols.index("lo"), cols.index("hi")
                report["records"] = sum(r[hi_at] - r[lo_at] + 1 for r in rows)
        for name, by in (("recovered_files", 1), ("recovered_records", report["records"])):
            db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET"
                       " value = value + excluded.value", (name, by))
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    finally:
        old.close()


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in db.execute(f"PRAGMA table_info({table})")]


def _scan_rowid(old: sqlite3.Connection, table: str, cols: list[str],
                report: dict[str, Any]) -> Iterator[tuple]:
    """Every readable row of a rowid table, in rowid order, skipping damaged pages. For the
    records (`runs`) each rowid skipped over is also looked up on its own: an interior page
    may still lead to a leaf that a scan past the damaged one cannot reach."""
    sql = f"SELECT rowid, {', '.join(cols)} FROM {table} WHERE rowid > ? ORDER BY rowid"
    point = upper = None
    if table == "runs":
        point = f"SELECT rowid, {', '.join(cols)} FROM {table} WHERE rowid = ?"
        try:
            upper = old.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0]
        except sqlite3.DatabaseError:
            upper = None
    for row in _skip_scan(old, sql, (), report, point, upper or POINT_MAX):
        yield row[1:]


def _skip_scan(old: sqlite3.Connection, sql: str, args: tuple, report: dict[str, Any],
               point: str | None = None, upper: int = 0) -> Iterator[tuple]:
    """Rows of `sql` (its last parameter: the key to go on above, its first column: that
    key). On an error the scan goes on above the last key read: first past it one step,
    then two, four..., until a read works, then back down in halves to the lowest start
    that reads, so a damaged page loses its own rows only. With `point` (a lookup by key),
    each key skipped over is also looked up on its own (up to POINT_MAX of them)."""
    last = 0               # seqs and rowids start at 1
    while True:
        try:
            for row in old.execute(sql, (*args, last)):
                last = row[0]
                yield row
            return
        except sqlite3.DatabaseError:
            report["unreadable"] += 1
        # The lowest start above `last` from which the next row can be read.
        step = 1
        while not _readable(old, sql, args, last + step):
            if step >= SKIP_MAX or last + step >= SKIP_MAX:
                # Nothing readable by range above `last` (a truncated file): keys up to
                # `upper` may still be found one by one.
                if point is not None:
                    yield from _points(old, point, args, last + 1,
                                       min(upper, last + POINT_MAX))
                return
            step *= 2
        lo, hi = last + step // 2, last + step   # lo: unreadable (or `last`), hi: readable
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _readable(old, sql, args, mid):
                hi = mid
            else:
                lo = mid
        if point is not None:
            # (A start above every row reads too - nothing: `upper` bounds the lookups.)
            yield from _points(old, point, args, last + 1, min(hi, upper, last + POINT_MAX))
        last = hi


def _points(old: sqlite3.Connection, point: str, args: tuple, lo: int,
            hi: int) -> Iterator[tuple]:
    """Rows of keys lo..hi looked up one by one (the unreadable ones skipped)."""
    for key in range(lo, hi + 1):
        try:
            row = old.execute(point, (*args, key)).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row is not None:
            yield row


def _readable(old: sqlite3.Connection, sql: str, args: tuple, start: int) -> bool:
    try:
        old.execute(sql + " LIMIT 1", (*args, start)).fetchall()
    except sqlite3.DatabaseError:
        return False
    return True
