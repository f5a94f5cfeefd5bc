#!/usr/bin/env python3
"""Firmware memory per role: a whole simulated node under MicroPython for N simulated minutes.

    .venv/bin/python bench/bench_firmware_memory.py                 # every role, 60 min, 64k
    .venv/bin/python bench/bench_firmware_memory.py --role water --minutes 120 --speed 600
    .venv/bin/python bench/bench_firmware_memory.py --role toll --heap 96k --minutes 60 \
        --speed 40 --busy 0.5            # backpressure soak: busy, journal full, then drain

Each node is firmware/sim_main.py running the precompiled firmware (tools/sim/launcher.py build_mpy)
on its LittleFS2 flash image, on a pty, with this script as the gateway
(roadside.gateway.protocol: TIME + ACK to HELLO, ACK to RECORDS), so the journal drains as in
the field. The node is started with
`sim.mem_log`: every 50 main loops it logs gc.mem_alloc() just before its periodic
gc.collect() ("used": what the heap held at the end of that gc cycle, the sample of the peak)
and after it ("live": what the node really keeps).

Reported per role and heap size:
  code     heap taken by the imported firmware modules alone (bytecode, qstrs, module dicts)
           on this 64-bit unix port; frozen into the firmware image on a board, this is flash,
           not heap
  peak     the largest "used" sample, and the heap free at that moment
  data     peak - code: what the running node itself needs
  alloc    bytes allocated per main loop (used - previous live, / 50 loops)
  growth   live at the end of the run minus live after the first simulated minutes
The goal (issue 4): >= 30 % of 64 KiB free at peak and no growth over an hour. At a literal
`-X heapsize=64k` the 64-bit port may not even hold the code; the script then also runs the
node with 64 KiB left for data (heap = code + 64 KiB), which is what a board with the firmware
frozen into flash has to work with, and reports both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from roadside.gateway import protocol as gp  # noqa: E402
from roadside.tools.sim.launcher import (  # noqa: E402
    FIRMWARE,
    FLASH_DRIVER_HEAP,
    SIM_MAIN,
    build_mpy,
    micropython_binary,
    resolve_scenario,
    write_node,
)
from roadside.tools.sim.vflash import fs_blocks  # noqa: E402

SCENARIO = {"water": "flood", "signal": "normal", "toll": "peak"}
# On its flash image a toll node spends ~8 ms of real time in LittleFS per transaction
# (acks.log append, journal append, state.json): sped up 360 times the peak scenario asks
# for more than a second of flash work per second and the node falls behind, which says
# nothing about memory. Its speed is capped here.
MAX_SPEED = {"toll": 30.0}
LOOPS_PER_SAMPLE = 50


def roles_present() -> list[str]:
    return [r for r in ("water", "signal", "toll")
            if (FIRMWARE / "roadside_node" / "roles" / f"{r}.py").exists()]


def code_bytes(role: str, mpy: Path) -> int:
    """Heap held by the modules a node of this role imports (after gc.collect)."""
    mods = ["roadside_node.app", "roadside_node.config", "roadside_node.hw.sim",
            f"roadside_node.roles.{role}"]
    extra = FIRMWARE / "roadside_node" / "hw" / f"sim_{role}.py"
    if extra.exists():
        mods.append(f"roadside_node.hw.sim_{role}")
    code = (f"import sys, gc\nsys.path.insert(0, {str(mpy)!r})\ngc.collect()\n"
            "a = gc.mem_alloc()\n"
            + "".join(f"import {m}\n" for m in mods)
            + "gc.collect()\nprint(gc.mem_alloc() - a)\n")
    out = subprocess.run([micropython_binary(), "-X", "heapsize=1M", "-c", code],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@dataclass
class Result:
    role: str
    heap: int
    booted: bool = False
    error: str = ""
    samples: list[tuple[int, int, int, float]] = field(default_factory=list)  # loop, used, live, t
    health_free: list[int] = field(default_factory=list)
    records: int = 0
    sim_minutes: float = 0.0
    wall_s: float = 0.0
    busy_answers: int = 0
    resets: int = 0


def run_node(role: str, heap: int, minutes: float, speed: float, mpy: Path,
             work: Path, mem_log: str = "peak", busy: float = 0.0) -> Result:
    res = Result(role, heap)
    speed = min(speed, MAX_SPEED.get(role, speed))
    node_dir = work / f"{role}-{heap}"
    shutil.rmtree(node_dir, ignore_errors=True)
    node_dir.mkdir(parents=True)
    master, slave = os.openpty()
    tty.setraw(master)
    cfg = {"node_id": f"{role[:2]}-bench", "role": role, "board": "sim",
           "health_interval_s": 60}
    sim = {"uart": os.ttyname(slave), "scenario": str(resolve_scenario(role, SCENARIO[role])),
           "speed": speed, "seed": 7, "mem_log": mem_log}
    os.close(slave)
    # the node's flash image (config, journal, state) and its wiring, as tools/sim/launcher.py does
    write_node(node_dir, cfg, {"board": "sim", "blocks": fs_blocks(), "sim": sim})
    log = node_dir / "node.log"
    start = time.monotonic()
    with open(log, "wb") as out:
        # plus the twin's flash driver, which is C on the board (tools/sim/launcher.py
        # HEAPSIZE); it is taken out of every sample below, so the figures are the board's
        proc = subprocess.Popen([micropython_binary(), "-X",
                                 f"heapsize={heap + FLASH_DRIVER_HEAP}",
                                 str(SIM_MAIN), str(node_dir), str(mpy)],
                                cwd=node_dir, stdout=out, stderr=subprocess.STDOUT)
    dec = gp.FrameDecoder()
    stored: set[int] = set()
    acked = 0
    wall = minutes * 60 / speed
    try:
        while time.monotonic() - start < wall + 1.0:
            if proc.poll() is not None:
                break
            r, _, _ = select.select([master], [], [], 0.05)
            if not r:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:
                time.sleep(0.05)
                continue
            for payload in dec.feed(chunk):
                msg = gp.decode_message(payload)
                if isinstance(msg, gp.Hello):
                    os.write(master, gp.encode_frame({0: gp.TIME, 1: int(time.time() * 1000)}))
                    os.write(master, gp.encode_frame({0: gp.ACK, 1: acked}))
                elif isinstance(msg, gp.Records) and time.monotonic() - start < busy * wall:
                    # backpressure: the journal fills, the node resends its window each second
                    res.busy_answers += 1
                    os.write(master, gp.error_frame(gp.ERR_BUSY, "gateway queue full",
                                                    gp.RECORDS))
                elif isinstance(msg, gp.Records):
                    for rec in msg.records:
                        stored.add(rec.seq)
                        if rec.kind == 3:
                            res.health_free.append(int(rec.body[1]))
                    while acked + 1 in stored:
                        acked += 1
                    acked = max(acked, msg.from_seq - 1)
                    os.write(master, gp.encode_frame({0: gp.ACK, 1: acked}))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    res.wall_s = time.monotonic() - start
    res.records = len(stored)
    text = log.read_text(errors="replace")
    for line in text.splitlines():
        if line.startswith("mem loop"):
            p = line.split()
            res.samples.append((int(p[2]), int(p[4]) - FLASH_DRIVER_HEAP,
                                int(p[6]) - FLASH_DRIVER_HEAP, float(p[10])))
    res.booted = bool(res.samples) or "hello sent" in text
    res.resets = text.count("Traceback")
    if "MemoryError" in text or proc.returncode not in (None, -9, 0):
        tail = [ln for ln in text.splitlines() if "Error" in ln]
        res.error = tail[-1] if tail else f"exited {proc.returncode}"
    if res.samples:
        res.sim_minutes = res.samples[-1][3] / 60
    return res


def summarise(res: Result, code: int, alloc: Result | None = None) -> dict:
    if not res.samples:
        return {"role": res.role, "heap": res.heap, "error": res.error or "no samples"}
    used = [s[1] for s in res.samples]
    live = [s[2] for s in res.samples]
    peak = max(used)
    a = (alloc or res).samples
    allocs = [(a[i][1] - a[i - 1][2]) / LOOPS_PER_SAMPLE for i in range(1, len(a))]
    settle = [s[2] for s in res.samples if s[3] >= 300] or live  # after 5 simulated minutes
    return {
        "role": res.role, "heap": res.heap, "code": code, "peak": peak,
        "free_at_peak": res.heap - peak, "free_pct": 100 * (res.heap - peak) / res.heap,
        "data_peak": peak - code,
        "data_free_pct_of_64k": 100 * (65536 - (peak - code)) / 65536,
        "alloc_per_loop": sum(allocs) / len(allocs) if allocs else 0.0,
        "live_first": settle[0], "live_last": live[-1], "growth": live[-1] - settle[0],
        "live_max": max(settle), "min_health_free": min(res.health_free, default=None),
        "records": res.records, "sim_minutes": res.sim_minutes, "wall_s": res.wall_s,
        "error": res.error, "busy_answers": res.busy_answers,
    }


def kib(n: float) -> str:
    return f"{n / 1024:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", action="append", choices=["water", "signal", "toll"],
                    help="role(s) to run (default: every role whose module exists)")
    ap.add_argument("--minutes", type=float, default=60, help="simulated minutes (default 60)")
    ap.add_argument("--speed", type=float, default=360,
                    help="simulated seconds per real second (default 360)")
    ap.add_argument("--heap", default="64k", help="MicroPython heap (default 64k)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    ap.add_argument("--busy", type=float, default=0.0, metavar="FRACTION",
                    help="backpressure soak: the gateway answers ERROR 6 (busy) to every RECORDS"
                         " for this first fraction of the run (the journal fills), then ACKs")
    args = ap.parse_args()
    heap = int(args.heap.rstrip("kK")) * 1024 if args.heap[-1] in "kK" else int(args.heap)
    mpy = build_mpy()
    if mpy is None:
        print("no mpy-cross: cannot precompile the firmware", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="roadside-mem-") as tmp:
        for role in args.role or roles_present():
            code = code_bytes(role, mpy)
            res = run_node(role, heap, args.minutes, args.speed, mpy, Path(tmp), busy=args.busy)
            if not res.samples:  # did not fit: run it with 64 KiB left for data as well
                rows.append(summarise(res, code))
                heap_ = int(math.ceil((code + 65536) / 1024)) * 1024
                res = run_node(role, heap_, args.minutes, args.speed, mpy, Path(tmp),
                               busy=args.busy)
            else:
                heap_ = heap
            # allocation per loop: a pass with collections only every 50 loops (no threshold)
            big = max(heap_, code + 128 * 1024)
            alloc = run_node(role, big, args.minutes / 4, args.speed, mpy, Path(tmp), "alloc")
            rows.append(summarise(res, code, alloc))
    print(f"firmware memory: {args.minutes:g} simulated min at speed {args.speed:g} "
          f"(at most {', '.join(f'{r} {v:g}' for r, v in MAX_SPEED.items())}), "
          + (f"gateway busy for the first {100 * args.busy:.0f} %, " if args.busy else "")
          + f"MicroPython {subprocess.run([micropython_binary(), '-c', 'import sys; print(sys.version)'], capture_output=True, text=True).stdout.strip()}")  # noqa: E501
    print(f"{'role':7} {'heap':>6} {'code':>6} {'peak':>6} {'free@pk':>8} {'data':>6} "
          f"{'data/64k free':>13} {'live':>6} {'B/loop':>7} {'growth':>7} {'records':>7} "
          f"{'sim min':>7}")
    for r in rows:
        if "peak" not in r:
            print(f"{r['role']:7} {kib(r['heap']):>6} does not run: {r['error']}")
            continue
        print(f"{r['role']:7} {kib(r['heap']):>6} {kib(r['code']):>6} {kib(r['peak']):>6} "
              f"{kib(r['free_at_peak']):>5} {r['free_pct']:2.0f}% {kib(r['data_peak']):>6} "
              f"{r['data_free_pct_of_64k']:12.0f}% {kib(r['live_max'] - r['code']):>6} "
              f"{r['alloc_per_loop']:7.0f} "
              f"{r['growth']:7d} {r['records']:7d} {r['sim_minutes']:7.1f}"
              + (f"  busy answers {r['busy_answers']}" if r["busy_answers"] else "")
              + (f"  ({r['error']})" if r["error"] else ""))
    print("(KiB; code = firmware modules on the heap, flash when frozen; data = peak - code;"
          " live = most kept after a collect, - code; B/loop = bytes allocated per main loop;"
          " growth = live bytes, end - after 5 simulated minutes)")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
