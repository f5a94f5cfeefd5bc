"""Flash several boards in parallel and write the provisioning report.

One thread per board (the work is serial I/O, so threads overlap it fully); esptool output
is routed per thread by `flashing`. A board that fails is recorded and the others go on.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .boards import Board
from .flashing import FlashResult, ImageInfo, Progress, flash_board

REPORT_FIELDS = ("port", "mac", "chip", "flash_size", "image_sha256", "node_id", "result",
                 "error", "seconds", "board", "image", "offset", "verified")


def flash_fleet(ports: list[str], board: Board, image: ImageInfo, *, erase: bool = False,
                baud: int = 115200, role: str | None = None, connect_attempts: int = 7,
                progress: Callable[[str], Progress] | None = None,
                on_done: Callable[[FlashResult], None] | None = None) -> list[FlashResult]:
    """Flash every port at once; results in the order of `ports`.

    Two boards reporting the same MAC (one board reached through two ports, or a cloned
    eFuse) are both marked failed: their node ids would collide.
    """

    def one(port: str) -> FlashResult:
        res = flash_board(port, board, image, erase=erase, baud=baud, role=role,
                          connect_attempts=connect_attempts,
                          progress=progress(port) if progress else None)
        if on_done is not None:
            on_done(res)
        return res

    with ThreadPoolExecutor(max_workers=max(1, len(ports)),
                            thread_name_prefix="flash") as pool:
        results = list(pool.map(one, ports))
    by_mac: dict[str, FlashResult] = {}
    for r in results:
        if r.result != "ok" or not r.mac:
            continue
        if r.mac in by_mac:
            first = by_mac[r.mac]
            for dup, other in ((r, first), (first, r)):
                dup.result = "failed"
                dup.error = (f"same MAC {r.mac} as {other.port}: one board on two ports, or a "
                             "cloned MAC; its node id would collide")
        else:
            by_mac[r.mac] = r
    return results


def write_report(results: list[FlashResult], directory: Path, stem: str) -> tuple[Path, Path]:
    """Write `<stem>.csv` and `<stem>.json` into `directory`; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    csv_path = directory / f"{stem}.csv"
    json_path = directory / f"{stem}.json"
    rows = [{k: r.as_dict()[k] for k in REPORT_FIELDS} for r in results]
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=REPORT_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps({"boards": rows}, indent=2) + "\n", encoding="utf-8")
    return csv_path, json_path
