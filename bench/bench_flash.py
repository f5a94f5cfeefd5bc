#!/usr/bin/env python3
"""Flash benchmark: one virtual board, then `fleet flash` of 4 at once (goal: < 1.5 x one).

    .venv/bin/python bench/bench_flash.py                  # 1.5 MiB image, 3 runs each
    .venv/bin/python bench/bench_flash.py --size-kib 512 --runs 5 --boards 8

Each virtual board is an esp32-mock-bootloader process on a loopback TCP port (see
tools/sim/virtual_rom.py); the image is generated with esptool's image classes, pseudo-random so
it compresses about as little as a real MicroPython firmware.bin (~1.5 MiB for
ESP32_GENERIC). Measured: wall time of `flash_board` (connect, detect, stub, flash id, MAC,
write, MD5 verify) for one board, and of `flash_fleet` for N boards in parallel threads;
the median of the runs and the ratio fleet / one. Fresh servers for every run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from roadside.tools.install import boards, flashing, fleet
from roadside.tools.sim import virtual_rom


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc (0 where /proc is absent)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(n: int, board: boards.Board, image: flashing.ImageInfo, state: Path,
             fast_slip: bool) -> tuple[float, float, float]:
    """(wall s, host CPU s, virtual boards' CPU s) of flashing n boards."""
    roms = [virtual_rom.start("esp32", f"24:0a:c4:be:00:{i:02x}", lifetime=120,
                              state_dir=state / f"rom{i}", fast_slip=fast_slip)
            for i in range(n)]
    try:
        rom_cpu0 = sum(_cpu_seconds(r.proc.pid) for r in roms)
        cpu0 = time.process_time()
        started = time.perf_counter()
        if n == 1:
            results = [flashing.flash_board(roms[0].url, board, image)]
        else:
            results = fleet.flash_fleet([r.url for r in roms], board, image)
        elapsed = time.perf_counter() - started
        host_cpu = time.process_time() - cpu0
        rom_cpu = sum(_cpu_seconds(r.proc.pid) for r in roms) - rom_cpu0
    finally:
        for r in roms:
            r.stop()
    failed = [r for r in results if r.result != "ok"]
    if failed:
        sys.exit(f"bench: {failed[0].port}: {failed[0].error}")
    return elapsed, host_cpu, rom_cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-kib", type=int, default=1536, help="image size (default 1536)")
    ap.add_argument("--boards", type=int, default=4, help="fleet size (default 4)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each (default 3)")
    ap.add_argument("--stock-mock", action="store_true",
                    help="keep the mock's byte-by-byte SLIP decoder (emulator CPU dominates)")
    args = ap.parse_args()
    board = boards.load("esp32-devkitc-v4")
    with tempfile.TemporaryDirectory(prefix="bench-flash-") as tmp:
        d = Path(tmp)
        path = virtual_rom.build_test_image("esp32", d / "esp32.bin", args.size_kib * 1024)
        image = flashing.read_image(path)
        fast = not args.stock_mock
        one = [run_once(1, board, image, d, fast) for _ in range(args.runs)]
        many = [run_once(args.boards, board, image, d, fast) for _ in range(args.runs)]
    t1 = statistics.median(r[0] for r in one)
    tn = statistics.median(r[0] for r in many)
    print(f"image: {image.size / 1024:.0f} KiB esp32 app image, sha256 {image.sha256[:16]}...; "
          f"{os.cpu_count()} CPUs; mock SLIP decoder: {'stock' if args.stock_mock else 'fast'}")
    for label, rows, med in (("flash 1 board", one, t1),
                             (f"fleet flash {args.boards} boards", many, tn)):
        print(f"{label:<22} median {med:.2f} s  (runs: "
              f"{', '.join(f'{r[0]:.2f}' for r in rows)}; CPU per run: host "
              f"{statistics.median(r[1] for r in rows):.2f} s, virtual boards "
              f"{statistics.median(r[2] for r in rows):.2f} s)")
    verdict = "meets" if tn < 1.5 * t1 else "MISSES"
    print(f"fleet / one: {tn / t1:.2f} x  ({verdict} the goal < 1.5 x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
