#!/usr/bin/env python3
"""Hostile input at the node: mutated frames into the real firmware under MicroPython.

    .venv/bin/python bench/bench_fuzz_node.py                      # 100,000 frames, all links
    .venv/bin/python bench/bench_fuzz_node.py --frames 20000 --mode uart --seed 7

The driver (tests/support/fuzz_node.py, precompiled with mpy-cross like the firmware) boots
the node (App: session, config, journal, the BLE port on hw/sim_bluetooth.py's API, auth) in
one MicroPython process at the board's heap and feeds it frames on one link:
  uart      framed messages from a gateway: commands with hostile names, keys and values
            (990-character texts, inf, NaN, 2^64, long lists), ACK/TIME/ERROR with bad
            fields, byte-level damage, oversize and broken frames
  ble_pre   a central that never authenticated: AUTH with bad steps and nonces, unsealed
            commands, garbage, connects and disconnects, handshakes left unfinished
  ble_auth  a central that knows the secret: the same messages sealed with good tags, and
            replayed, wrapped or truncated counters and tags
Reported per link: frames/s, resets (exceptions that left the main loop step: a board
would reset), reboots asked for by a fuzzed `reboot` command, the slowest frame, the least
free heap, and the live heap after warm-up and at the end (growth). The frames are split
evenly over the links; each link runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from roadside.tools.sim.launcher import BLE_HEAPSIZE, HEAPSIZE

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "support" / "fuzz_node.py"
MODES = ("uart", "ble_pre", "ble_auth")
# The node's heap: tools/sim/launcher.py's (an ESP32 without PSRAM in this 64-bit twin's terms,
# a BLE node with its simulated radio's buffers), plus
# room for the driver: its bytecode takes 11.6 KiB of heap here, its notification buffer 4,
# and the frames it builds (990-character texts, their CBOR, sealed, framed, cut in 200-byte
# writes) a few KiB more at once. The node under test keeps about the board's heap for itself.
# (With 8 KiB less, the BLE node runs out of contiguous heap on its big frames now and then:
# those MemoryErrors are caught and counted as "failed", none resets the node.)
NODE_HEAP = {"uart": int(HEAPSIZE), "ble_pre": int(BLE_HEAPSIZE), "ble_auth": int(BLE_HEAPSIZE)}
DRIVER_KIB = 32
HEAP = {m: f"{n // 1024 + DRIVER_KIB}k" for m, n in NODE_HEAP.items()}


def run(mode: str, frames: int, seed: int = 1, workdir: Path | None = None,
        heap: str | None = None, timeout: float = 3600) -> dict:
    """`frames` fuzzed frames into one node under MicroPython; a reset or a reboot ends its
    process (as it ends a board's heap) and the next boot goes on from the same node
    directory. Returns the sums over all boots (and the longest boot's memory figures)."""
    sys.path.insert(0, str(REPO))
    from roadside.tools.sim.launcher import build_mpy

    mpy = build_mpy()
    assert mpy is not None, "no mpy-cross next to the venv's python: run `make` first"
    cross = Path(sys.executable).parent / "mpy-cross"
    micropython = Path(sys.executable).parent / "micropython"
    total: dict = {"mode": mode, "frames": 0, "resets": 0, "reboots": 0, "boots": 0,
                   "seconds": 0.0, "answers": 0, "skipped": 0, "failed": 0, "traces": [],
                   "slowest_ms": 0.0, "slowest_what": "", "free_min": None, "ble": {}}
    longest = 0
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        work = Path(tmp)
        (work / "fuzz_node.py").write_bytes(DRIVER.read_bytes())
        subprocess.run([str(cross), "-o", "fuzz_node.mpy", "fuzz_node.py"], cwd=work,
                       check=True, capture_output=True)
        (work / "fuzz_node.py").unlink()
        node = work / "node"
        node.mkdir()
        while total["frames"] < frames:
            boot = total["boots"]
            script = work / "_run.py"
            script.write_text(
                f"import sys\nsys.path.insert(0, {str(mpy)!r})\n"
                f"sys.path.insert(0, {str(work)!r})\nimport fuzz_node\n"
                f"fuzz_node.run({mode!r}, {frames - total['frames']}, {seed * 1000 + boot}, "
                f"fresh={boot == 0})\n")
            proc = subprocess.run([str(micropython), "-X", f"heapsize={heap or HEAP[mode]}",
                                   str(script)], cwd=node, capture_output=True,
                                  timeout=max(1.0, deadline - time.monotonic()))
            out = proc.stdout.decode(errors="replace")
            r = next((json.loads(line[7:]) for line in out.splitlines()
                      if line.startswith("RESULT ")), None)
            if r is None:
                raise RuntimeError(f"fuzz driver exited {proc.returncode} without a result:\n"
                                   f"{out[-3000:]}\n{proc.stderr.decode(errors='replace')[-3000:]}")
            total["boots"] += 1
            for k in ("frames", "resets", "reboots", "seconds", "answers", "skipped", "failed"):
                total[k] += r[k]
            total["traces"] += r["traces"]
            if r["slowest_ms"] > total["slowest_ms"]:
                total["slowest_ms"], total["slowest_what"] = r["slowest_ms"], r["slowest_what"]
            if total["free_min"] is None or r["free_min"] < total["free_min"]:
                total["free_min"] = r["free_min"]
            for k, v in r.get("ble", {}).items():
                if isinstance(v, int) and not isinstance(v, bool) and k != "mtu":
                    total["ble"][k] = total["ble"].get(k, 0) + v
            if r["frames"] > longest and r["live_start"] is not None:
                longest = r["frames"]  # memory growth: over the longest boot, after warm-up
                total.update(live_start=r["live_start"], live_end=r["live_end"],
                             longest_boot=r["frames"], journal_records=r["journal_records"])
    total["frames_per_s"] = total["frames"] / total["seconds"] if total["seconds"] else 0.0
    total.setdefault("live_start", None)
    total.setdefault("live_end", None)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--frames", type=int, default=100_000, help="in all, split over the links")
    ap.add_argument("--mode", choices=MODES, action="append", help="link (default: all)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    modes = args.mode or list(MODES)
    per = [args.frames // len(modes) + (i < args.frames % len(modes)) for i in range(len(modes))]
    total = resets = 0
    print(f"{'link':9} {'heap':>5} {'frames':>7} {'frames/s':>9} {'resets':>6} {'failed':>6} "
          f"{'reboots':>7} {'slowest ms':>10} {'free min':>8} {'live start':>10} "
          f"{'live end':>8} {'growth':>7}")
    for mode, n in zip(modes, per, strict=True):
        r = run(mode, n, args.seed)
        growth = (r["live_end"] - r["live_start"]) if r["live_start"] is not None else 0
        print(f"{mode:9} {HEAP[mode]:>5} {r['frames']:>7} {r['frames_per_s']:>9.0f} "
              f"{r['resets']:>6} {r['failed']:>6} {r['reboots']:>7} {r['slowest_ms']:>10.1f} "
              f"{r['free_min']:>8} {r['live_start'] or '-':>10} {r['live_end'] or '-':>8} "
              f"{growth:>+7}")
        print(f"{'':9} boots {r['boots']}; slowest frame: {r['slowest_what']}; growth over "
              f"the longest boot ({r.get('longest_boot')} frames, journal "
              f"{r.get('journal_records')} records at its end)")
        for t in r["traces"]:
            print(t)
        total += r["frames"]
        resets += r["resets"]
    print(f"total: {total} frames, {resets} resets")
    return 1 if resets else 0


if __name__ == "__main__":
    sys.exit(main())
