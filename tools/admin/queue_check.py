"""`roadside gateway check`: the queue file's integrity and its disk budget against the disk.

Read-only: the check opens the queue file read-only (the daemon may be running), never moves
or repairs it; the daemon recovers a damaged file when it starts (docs/GATEWAY.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def queue_checks(config: Any) -> list[str]:
    """Warnings, each one line saying what is wrong and what to do."""
    from roadside.gateway.queue_recovery import integrity
    from roadside.gateway.storage_health import DISK_RESERVE, disk_size

    warnings: list[str] = []
    path: Path = config.queue_path
    max_bytes = config.queue.max_bytes
    where = path.parent
    while not where.exists() and where != where.parent:
        where = where.parent          # data_dir not made yet: the volume it will be on
    total = disk_size(where)
    # Each queued byte needs about two on disk (the WAL, then the file), plus a reserve.
    if total is not None and 2 * max_bytes + DISK_RESERVE > total:
        warnings.append(
            f"queue.max_bytes = {max_bytes} needs about {2 * max_bytes + DISK_RESERVE} bytes"
            f" on disk (the WAL doubles it), but the volume of {where} holds {total}: the"
            f" queue will stop at the disk's free space instead (nodes are told busy); set"
            f" [queue] max_bytes to at most {max(0, (total - DISK_RESERVE) // 2)}")
    problem = integrity(path)
    if problem is not None:
        warnings.append(
            f"queue {path} is damaged ({problem}): the daemon moves it aside when it starts"
            f" (kept, timestamped) and re-queues every readable record; restart it"
            f" (systemctl restart roadside-gateway), or stop it and move the file away by"
            f" hand to start empty")
    return warnings
