"""One transaction on the queue's connection, and what a storage error does to it."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from typing import Any


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception; inside a group commit
    (Intake.store_many) a SAVEPOINT ... RELEASE (or ROLLBACK TO) in the group's transaction.
    `on_done` hears of the outcome (None: committed; else the storage error)."""

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
