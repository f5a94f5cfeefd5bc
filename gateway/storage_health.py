"""What the queue's disk told us lately, and how the daemon keeps going when it says no.

A full disk (SQLITE_FULL, "database or disk is full") or another storage error must never stop
the daemon: a store that cannot commit answers the node busy (it keeps its journal), and the
bookkeeping after a delivery (the 2xx, a dead letter, a batch cut) is retried until it commits
(`keep_trying`): the batch is posted again meanwhile at most once per retry, with the same
Idempotency-Key, so the backend still sees it once.

`Storage` (the queue's `storage`) holds the current error for /healthz and /status, logs it
through a `logs.Throttle` (the first line, a count at most once a minute, one line when a
commit works again), and the recovered-file count (queue_recovery.py).

The disk budget (`budget`): [queue] max_bytes, but never more than the volume can still take.
SQLite writes every change to the WAL first and copies it into the main file at a checkpoint,
so each new byte needs about two on disk; the free space of the volume plus the file's free
pages (reused before the file grows), less a reserve, halved, is what may still be added.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .logs import Throttle

T = TypeVar("T")
log = logging.getLogger("roadside.gateway.queue")

SQLITE_FULL = 13
# Kept free on the queue's volume for SQLite's own needs (the WAL index, a checkpoint's
# growth, the journal of a schema change) and for the rest of the system.
DISK_RESERVE = 1024 * 1024
DISK_SAMPLE_S = 1.0          # the free space is looked at most this often
RETRY_INITIAL_S = 0.2
RETRY_MAX_S = 5.0


def is_disk_full(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if getattr(cause, "sqlite_errorcode", None) == SQLITE_FULL or \
                "database or disk is full" in str(cause):
            return True
        cause = cause.__cause__
    return False


class Storage:
    """The queue file's health: the current storage error (None when the last commit
    worked), whether it is a full disk, and damaged files recovered at start."""

    def __init__(self, path: Path, mono: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.mono = mono
        self.throttle = Throttle(log, f"queue {path}", mono=mono)
        self.error: str | None = None
        self.disk_full = False
        self.errors = 0                          # storage errors since start
        self.recovered: list[dict[str, Any]] = []   # reports of queue_recovery.recover()
        self._free: tuple[float, int] | None = None   # (when, bytes free on the volume)

    @property
    def failing(self) -> bool:
        return self.error is not None

    def failed(self, exc: BaseException | str) -> None:
        """A commit did not happen (rolled back): remember and log it (throttled)."""
        self.errors += 1
        message = str(exc)
        self.disk_full = (isinstance(exc, BaseException) and is_disk_full(exc)) or \
            "database or disk is full" in message
        self.error = message
        advice = (f"; free space on the volume of {self.path} (the queue keeps what it"
                  f" holds, nodes are told busy)") if self.disk_full else ""
        self.throttle.error(f"queue storage error: {message}{advice}")

    def committed(self) -> None:
        """A commit worked: the storage error, if any, is over (one log line)."""
        if self.error is not None:
            self.error = None
            self.disk_full = False
            self.throttle.ok(f"queue storage works again: a commit succeeded after"
                             f" {self.throttle.total} failed")

    def free_bytes(self) -> int | None:
        """Free bytes on the queue's volume (sampled at most once a second), None if unknown."""
        now = self.mono()
        if self._free is None or now - self._free[0] >= DISK_SAMPLE_S:
            try:
                free = shutil.disk_usage(self.path.parent).free
            except OSError:
                return None
            self._free = (now, free)
        return self._free[1]

    def forget_free(self) -> None:
        self._free = None


def budget(max_bytes: int, counted: int, free: int | None, freelist: int) -> int:
    """Bytes the queue may count: [queue] max_bytes, but no more than what it counts now
    plus half of what the disk can still take (free + the file's free pages - reserve)."""
    if free is None:
        return max_bytes
    room = max(0, free + freelist - DISK_RESERVE) // 2
    return min(max_bytes, counted + room)


def disk_size(path: Path) -> int | None:
    """The size of the volume holding `path` (its directory), None if unknown."""
    try:
        return shutil.disk_usage(path if path.is_dir() else path.parent).total
    except OSError:
        return None


def file_bytes(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.stat(f"{path}{suffix}").st_size
        except OSError:
            pass
    return total


async def keep_trying(queue: Any, what: str, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` on the queue's thread until it commits: a storage error (a full disk) is
    logged (throttled), shown on /healthz, and retried with backoff (up to 5 s), never
    raised: bookkeeping that cannot commit yet must not stop the daemon."""
    from .errors import QueueError

    delay = RETRY_INITIAL_S
    while True:
        try:
            return await queue.call(fn, *args)
        except (sqlite3.Error, QueueError) as exc:
            storage: Storage | None = getattr(queue, "storage", None)
            if storage is None:
                raise
            storage.failed(f"cannot {what}: {exc}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)
