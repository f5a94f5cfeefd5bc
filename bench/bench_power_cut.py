#!/usr/bin/env python3
"""Power cuts at every write (docs/RELIABILITY.md "Power cuts"): the full sweep.

    .venv/bin/python bench/bench_power_cut.py            # full: every write, 3 ways to land
    .venv/bin/python bench/bench_power_cut.py --quick    # the bounded form the tests run
    .venv/bin/python bench/bench_power_cut.py --keeps 0  # only cuts where nothing lands
    .venv/bin/python bench/bench_power_cut.py --recovery # and cut each boot after a cut

firmware/vboard/power_cut.py runs under the real MicroPython unix port, in one process, on
LittleFS2 images in RAM: each segment of a node's life (boots, journal appends, state saves
on send and on ACK, compactions, config saves, secret provisioning, a full journal) is run
once to count its block programs/erases, then replayed from its starting image with the
power cut at every write index N (`keep` bytes of write N land: 0, 7 = a torn program,
2048 = half an erased sector), remounted and booted, and checked. With --recovery, the boot
after each cut of the first keep is itself cut at every one of its writes, then checked.
Prints every violation, a table per operation (writes, cuts tried, violations) and the
totals; exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MICROPYTHON = Path(sys.executable).parent / "micropython"
HEAP = "8m"  # the harness keeps flash images in RAM; the node code is the board's


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the shorter scenario of the tests")
    ap.add_argument("--keeps", default="0,7,2048",
                    help="bytes of the cut write that land, comma-separated (default 0,7,2048)")
    ap.add_argument("--recovery", type=int, nargs="?", const=1, default=0, metavar="N",
                    help="also cut the boot after every Nth cut (default every; first keep "
                         "only) at every one of its writes")
    args = ap.parse_args()
    keeps = tuple(int(k) for k in args.keeps.split(","))
    code = (f"import sys\nsys.path.insert(0, {str(REPO / 'firmware')!r})\n"
            "from vboard import power_cut\n"
            f"power_cut.main(full={not args.quick}, keeps={keeps!r}, "
            f"recovery={args.recovery})\n")
    cmd = [str(MICROPYTHON), "-X", f"heapsize={HEAP}", "-c", code]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - t0
    ops, total = [], {}
    for line in proc.stdout.splitlines():
        if line.startswith("VIOLATION"):
            print(line)
        elif line.startswith("{"):
            d = json.loads(line)
            if "op" in d:
                ops.append(d)
            else:
                total = d
    if proc.returncode or not total:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        print(f"micropython exited {proc.returncode}", file=sys.stderr)
        return 1
    print(f"power-cut sweep ({'quick' if args.quick else 'full'}, keeps {list(keeps)}"
          f"{', recovery boots cut' if args.recovery else ''}), "
          f"MicroPython unix port, LittleFS2 on 64 x 4 KiB sectors in RAM")
    print(f"{'operation':<28}{'writes':>8}{'cuts':>8}{'violations':>12}")
    for d in ops:
        print(f"{d['op']:<28}{d['writes']:>8}{d['cuts']:>8}{d['violations']:>12}")
    print(f"{'total':<28}{sum(d['writes'] for d in ops):>8}{total['total_cuts']:>8}"
          f"{total['violations']:>12}")
    print(f"{wall:.1f} s wall, {1000 * wall / max(1, total['total_cuts']):.1f} ms a cut "
          "(mount, boot, replay, cut, remount, boot, check)")
    return 1 if total["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
