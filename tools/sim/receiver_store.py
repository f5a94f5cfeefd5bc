"""The reference receiver's SQLite store, idempotent by batch id and by (node, seq)."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    site TEXT NOT NULL,
    created INTEGER NOT NULL,
    received REAL NOT NULL,
    records INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    arrival INTEGER PRIMARY KEY AUTOINCREMENT,   -- order of arrival, for ordering checks
    node TEXT NOT NULL,
    seq INTEGER NOT NULL,
    t INTEGER NOT NULL,
    kind TEXT NOT NULL,
    role TEXT NOT NULL,
    synced INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    data TEXT NOT NULL,                          -- JSON of the record's data map
    batch TEXT NOT NULL REFERENCES batches(id),
    UNIQUE (node, seq)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

COUNTERS = ("duplicate_batches", "duplicate_records", "out_of_order")


@dataclass(frozen=True)
class StoreResult:
    """What happened to one batch."""

    duplicate_batch: bool
    stored: int
    duplicate_records: int
    out_of_order: int


class ReceiverStore:
    """One SQLite file in WAL mode; every batch is stored in a single transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        for name in COUNTERS:
            self._db.execute("INSERT OR IGNORE INTO counters VALUES (?, 0)", (name,))

    def close(self) -> None:
        self._db.close()

    def store_batch(self, batch: dict[str, Any]) -> StoreResult:
        """Store a validated batch; a batch id seen before stores nothing and is counted."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM batches WHERE id = ?", (batch["batch"],)).fetchone():
                self._bump(db, "duplicate_batches", 1)
                db.execute("COMMIT")
                return StoreResult(True, 0, 0, 0)
            records = batch["records"]
            db.execute(
                "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?)",
                (batch["batch"], batch["gateway"], batch["site"], batch["created"], time.time(),
                 len(records)),
            )
            stored = dups = late = 0
            for r in records:
                row = db.execute(
                    "SELECT max(seq) FROM records WHERE node = ?", (r["node"],)
                ).fetchone()
                highest = row[0] or 0
                cur = db.execute(
                    "INSERT OR IGNORE INTO records (node, seq, t, kind, role, synced, priority,"
                    " data, batch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (r["node"], r["seq"], r["t"], r["kind"], r["role"], int(r["synced"]),
                     int(r["priority"]), json.dumps(r["data"], sort_keys=True), batch["batch"]),
                )
                if cur.rowcount == 0:
                    dups += 1
                else:
                    stored += 1
                    if r["seq"] < highest:
                        late += 1
            self._bump(db, "duplicate_records", dups)
            self._bump(db, "out_of_order", late)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return StoreResult(False, stored, dups, late)

    @staticmethod
    def _bump(db: sqlite3.Connection, name: str, by: int) -> None:
        if by:
            db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))

    def stats(self) -> dict[str, Any]:
        """Totals, and per node: records held, highest seq, how many seqs below it are missing."""
        db = self._db
        counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
        nodes = {
            node: {"records": count, "max_seq": max_seq, "gaps": max_seq - count}
            for node, count, max_seq in db.execute(
                "SELECT node, count(*), max(seq) FROM records GROUP BY node ORDER BY node"
            )
        }
        return {
            "batches": db.execute("SELECT count(*) FROM batches").fetchone()[0],
            "records": db.execute("SELECT count(*) FROM records").fetchone()[0],
            "duplicate_batches": counters["duplicate_batches"],
            "duplicate_records": counters["duplicate_records"],
            "out_of_order": counters["out_of_order"],
            "nodes": nodes,
        }


def read_seqs(path: str | Path) -> dict[str, list[int]]:
    """Every node's seqs in arrival order, from a receiver database (for tests and the demo)."""
    db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        out: dict[str, list[int]] = {}
        for node, seq in db.execute("SELECT node, seq FROM records ORDER BY arrival"):
            out.setdefault(node, []).append(seq)
        return out
    finally:
        db.close()


def latest_readings(path: str | Path) -> dict[str, dict[str, Any]]:
    """Per node, the newest level and alarm state the receiver holds (for the demo's view)."""
    db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        out: dict[str, dict[str, Any]] = {}
        rows = db.execute(
            "SELECT node, kind, data FROM records WHERE arrival IN ("
            " SELECT max(arrival) FROM records WHERE kind IN ('level', 'alarm')"
            " GROUP BY node, kind)"
        )
        for node, kind, data in rows:
            fields = json.loads(data)
            entry = out.setdefault(node, {})
            if kind == "level":
                entry["level_cm"] = fields.get("level_cm")
            else:
                entry["alarm"] = fields.get("state")
        return out
    finally:
        db.close()
