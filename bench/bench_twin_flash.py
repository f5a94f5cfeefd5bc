#!/usr/bin/env python3
"""The simulated node's flash (a LittleFS2 image, firmware/vboard): what it costs the node.

    .venv/bin/python bench/bench_twin_flash.py [--ops 100]

heap     what the twin's flash driver takes from a node's heap (vboard/filedev.py and flash.py
         imported precompiled, the mount with LittleFS's buffers): on the board the driver is
         C (esp32.Partition, frozen _boot.py), so tools/sim/launcher.py FLASH_DRIVER_HEAP adds the
         code part to the node's heap; LittleFS's buffers are in the board's heap as well
ops      real time and block-device calls per firmware file operation on a fresh 2 MiB image
         (the sim board's filesystem partition) with LittleFS's ESP32 settings (read/prog
         size 32, lookahead 32, 4 KiB blocks): a journal append (the firmware's Journal), a
         line appended to a log opened for each line (the toll role's acks.log), state.json
         written atomically (temp file + rename: after every ACK and record sent), a record read
         right after an append (the read handle reopened: LittleFS hides appended bytes)
The time is this machine's Python block device, not an ESP32's flash; the call counts are
LittleFS's and the same on the board.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from roadside.tools.sim.launcher import (  # noqa: E402
    FLASH_DRIVER_HEAP,
    HEAPSIZE,
    build_mpy,
    micropython_binary,
)
from roadside.tools.sim.vflash import fs_blocks  # noqa: E402

SCRIPT = r"""
import gc, sys, time
MPY, IMAGE, BLOCKS, OPS = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
COUNT = sys.argv[5] == "count"  # count block-device calls (slower: times from a plain run)
sys.path.insert(0, MPY)
gc.collect(); a0 = gc.mem_alloc()
import vboard.filedev as fd
from vboard.flash import mount_image, host_path
gc.collect(); a1 = gc.mem_alloc()
calls = {"r": 0, "w": 0, "e": 0}
R, W, E = fd.FileBlockDev.readblocks, fd.FileBlockDev.writeblocks, fd.FileBlockDev.erase
def r(self, n, buf, off=0):
    calls["r"] += 1
    R(self, n, buf, off)
def w(self, n, buf, off=0):
    calls["w"] += 1
    W(self, n, buf, off)
def e(self, n):
    calls["e"] += 1
    E(self, n)
if COUNT:  # before the mount: VfsLfs2 looks the methods up once
    fd.FileBlockDev.readblocks, fd.FileBlockDev.writeblocks, fd.FileBlockDev.erase = r, w, e
gc.collect(); a1 = gc.mem_alloc()
mount_image(IMAGE, BLOCKS)
gc.collect(); a2 = gc.mem_alloc()
print("heap code", a1 - a0, "mount", a2 - a1)
sys.path.insert(0, host_path(MPY))
from roadside_node.journal import Journal, write_atomic
j = Journal(max_bytes=262144)
j.load()
body = {1: "E2801160600002084D5B7C31", 2: 1, 3: 7, 4: -58}

def op(name, fn):
    for k in calls:
        calls[k] = 0
    t = time.ticks_us()
    for i in range(OPS):
        fn(i)
    us = time.ticks_diff(time.ticks_us(), t)
    print("op", name, us / OPS / 1000, calls["r"] / OPS, calls["w"] / OPS, calls["e"] / OPS)

def append(i):
    j.append(1000 + i, 20, 0, body)

def ack_line(i):
    with open("acks.log", "a") as f:
        f.write("%d,E2801160600002084D5B7C31,%d\n" % (i, i))

def state(i):
    write_atomic("state.json", '{"next_seq": %d, "acked": %d, "boot_count": 1, '
                 '"dropped_full": 0}' % (i + 1, i))

def append_read(i):
    j.append(1000 + i, 20, 0, body)
    j.read(j.next_seq - 1)

op("journal_append", append)
op("log_line_open_append_close", ack_line)
op("state_json_write_atomic", state)
op("append_then_read", append_read)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", type=int, default=100, help="operations per kind (default 100)")
    args = ap.parse_args()
    mpy = build_mpy()
    if mpy is None:
        print("no mpy-cross: cannot precompile the firmware", file=sys.stderr)
        return 2
    blocks = fs_blocks("sim")
    runs = {}
    for mode in ("time", "count"):
        with tempfile.TemporaryDirectory(prefix="roadside-twin-") as tmp:
            done = subprocess.run([micropython_binary(), "-X", f"heapsize={HEAPSIZE}", "-c",
                                   SCRIPT, str(mpy), str(Path(tmp) / "flash.img"),
                                   str(blocks), str(args.ops), mode],
                                  capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            print(done.stdout + done.stderr, file=sys.stderr)
            return 1
        runs[mode] = [line.split() for line in done.stdout.splitlines()]
    print(f"twin flash: {blocks} blocks of 4 KiB (boards/sim.toml), {args.ops} ops each")
    for p in runs["time"]:
        if p[0] == "heap":
            print(f"heap: driver code {int(p[2]) / 1024:.1f} KiB, mount (LittleFS buffers, "
                  f"objects) {int(p[4]) / 1024:.1f} KiB; node heap adds "
                  f"FLASH_DRIVER_HEAP = {FLASH_DRIVER_HEAP / 1024:.1f} KiB")
    counts = {p[1]: p for p in runs["count"] if p[0] == "op"}
    for p in runs["time"]:
        if p[0] == "op":
            c = counts[p[1]]
            print(f"  {p[1]:28} {float(p[2]):6.2f} ms  block reads {float(c[3]):7.1f}  "
                  f"progs {float(c[4]):5.1f}  erases {float(c[5]):4.2f}  per op")
    return 0


if __name__ == "__main__":
    sys.exit(main())
