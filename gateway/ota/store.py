"""What the gateway keeps of rollouts and transfers across a restart: data_dir/ota.sqlite (a
small file beside the queue, apart from the queue's writer) and the bundles themselves as
data_dir/ota/TAG.rsb. The node's own OTA_STATE stays the truth for where a transfer stands
(`have`); the file says which transfers were under way and for which rollout.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY,
    tag TEXT NOT NULL,             -- hex of the bundle's tag (data_dir/ota/TAG.rsb)
    kind TEXT NOT NULL,
    version TEXT NOT NULL,
    nodes TEXT NOT NULL,           -- JSON list, in rollout order (canaries first)
    canary INTEGER NOT NULL,
    force INTEGER NOT NULL,
    who TEXT NOT NULL,
    origin TEXT NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL,           -- running, done, halted, cancelled
    reason TEXT
);
CREATE TABLE IF NOT EXISTS transfers (
    rollout INTEGER NOT NULL,
    node TEXT NOT NULL,
    state TEXT NOT NULL,           -- transfer.py STATES
    have INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    PRIMARY KEY (rollout, node)
);
"""


@dataclass
class RolloutRow:
    id: int
    tag: str
    kind: str
    version: str
    nodes: list[str]
    canary: int
    force: bool
    who: str
    origin: str
    created: float
    state: str
    reason: str | None


class OtaStore:
    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "ota"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(data_dir / "ota.sqlite", isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- bundles ------------------------------------------------------------------------------
    def bundle_path(self, tag: str) -> Path:
        return self.dir / f"{tag}.rsb"

    def keep_bundle(self, tag: str, raw: bytes) -> None:
        path = self.bundle_path(tag)
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(raw)
            tmp.replace(path)

    # -- rows ---------------------------------------------------------------------------------
    def add_rollout(self, tag: str, kind: str, version: str, nodes: list[str], canary: int,
                    force: bool, who: str, origin: str, size: int) -> int:
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO rollouts (tag, kind, version, nodes, canary, force, who, origin,"
                " created, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running')",
                (tag, kind, version, json.dumps(nodes), canary, int(force), who, origin, now))
            rid = int(cur.lastrowid or 0)
            self._db.executemany(
                "INSERT INTO transfers (rollout, node, state, size, updated)"
                " VALUES (?, ?, 'pending', ?, ?)", [(rid, n, size, now) for n in nodes])
        return rid

    def set_rollout(self, rid: int, state: str, reason: str | None) -> None:
        with self._lock:
            self._db.execute("UPDATE rollouts SET state = ?, reason = ? WHERE id = ?",
                             (state, reason, rid))

    def set_transfer(self, rid: int, node: str, state: str, have: int, reason: str | None,
                     attempts: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE transfers SET state = ?, have = ?, reason = ?, attempts = ?,"
                " updated = ? WHERE rollout = ? AND node = ?",
                (state, have, reason, attempts, time.time(), rid, node))

    def rollouts(self, running_only: bool = False, limit: int = 20) -> list[RolloutRow]:
        where = "WHERE state = 'running'" if running_only else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, tag, kind, version, nodes, canary, force, who, origin, created,"
                f" state, reason FROM rollouts {where} ORDER BY id DESC LIMIT ?",
                (limit,)).fetchall()
        return [RolloutRow(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], bool(r[6]), r[7],
                           r[8], r[9], r[10], r[11]) for r in rows]

    def transfers(self, rid: int) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT node, state, have, size, reason, attempts FROM transfers"
                " WHERE rollout = ?", (rid,)).fetchall()
        return {r[0]: {"state": r[1], "have": r[2], "size": r[3], "reason": r[4],
                       "attempts": r[5]} for r in rows}
