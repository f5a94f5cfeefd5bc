"""The twin's heap against the board's: how much more heap the same node needs on this
64-bit MicroPython than on a 32-bit one (an ESP32), per role, at its first HELLO.

    .venv/bin/python bench/bench_heap_bits.py --micropython32 /tmp/mp32/micropython32

Each role's node (firmware/sim_main.py on its LittleFS image, the precompiled firmware of
tools/sim/launcher.py build_mpy: bytecode .mpy loads on both word sizes) is started under both
interpreters with the same heap; the free heap it reports in its HELLO (key 10) gives
used64 - used32. tools/sim/launcher.py BITS64_HEAP is the lowest of these figures.

A 32-bit unix port is not part of the venv: build one from MicroPython's source (the same
version as the venv's `micropython`) with gcc-multilib, e.g. in ports/unix:
`make MICROPY_PY_FFI=0 MICROPY_PY_BTREE=0 MICROPY_PY_SSL=0 MICROPY_SSL_MBEDTLS=0
MICROPY_VFS_LFS2=1 MICROPY_PY_THREAD=0 CFLAGS_EXTRA=-m32 LDFLAGS_EXTRA=-m32` (docs/PERFORMANCE.md
"The twin's heap" has the full recipe and the figures).
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

import cbor2
from cobs import cobs
from roadside.tools.sim.launcher import (
    BITS64_HEAP,
    DEFAULT_SCENARIO,
    FIRMWARE,
    build_mpy,
    micropython_binary,
    resolve_scenario,
    write_node,
)
from roadside.tools.sim.vflash import fs_blocks

HEAP_KIB = 160  # room for both: the figure is a difference of used heap
TIMEOUT_S = 20.0


def free_at_hello(binary: str, role: str, mpy: Path) -> int:
    """Start the role's node under `binary`; the free heap its first HELLO reports."""
    with tempfile.TemporaryDirectory(prefix="heapbits-") as tmp:
        node = Path(tmp) / "node"
        master, slave = pty.openpty()
        tty.setraw(master)
        sim = {"uart": os.ttyname(slave), "speed": 20, "seed": 3,
               "scenario": str(resolve_scenario(role, DEFAULT_SCENARIO[role]))}
        write_node(node, {"node_id": "x-0001", "role": role, "board": "sim"},
                   {"board": "sim", "blocks": fs_blocks(), "sim": sim})
        log = open(node / "log", "wb")
        proc = subprocess.Popen([binary, "-X", f"heapsize={HEAP_KIB}k",
                                 str(FIRMWARE / "sim_main.py"), str(node), str(mpy)],
                                stdout=log, stderr=subprocess.STDOUT)
        buf, deadline = b"", time.monotonic() + TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if not select.select([master], [], [], 0.5)[0]:
                    continue
                buf += os.read(master, 4096)
                while b"\x00" in buf:
                    frame, buf = buf.split(b"\x00", 1)
                    try:
                        msg = cbor2.loads(cobs.decode(frame)[:-4])
                    except Exception:  # noqa: BLE001 - a partial first frame
                        continue
                    if isinstance(msg, dict) and msg.get(0) == 1:
                        return int(msg[10])
        finally:
            proc.kill()
            proc.wait()
            log.close()
            os.close(master)
            os.close(slave)
        raise SystemExit(f"{binary}: no HELLO from the {role} node in {TIMEOUT_S:.0f} s; "
                         f"see its log")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--micropython32", required=True, help="a 32-bit unix-port micropython")
    args = ap.parse_args()
    mpy = build_mpy()
    if mpy is None:
        raise SystemExit("no mpy-cross: run `make` first")
    print(f"free heap at HELLO with -X heapsize={HEAP_KIB}k; tools/sim/launcher.py BITS64_HEAP = "
          f"{BITS64_HEAP // 1024} KiB")
    print(f"{'role':7} {'free 64-bit':>11} {'free 32-bit':>11} {'64-bit needs more':>18}")
    for role in ("water", "signal", "toll"):
        f64 = free_at_hello(micropython_binary(), role, mpy)
        f32 = free_at_hello(args.micropython32, role, mpy)
        print(f"{role:7} {f64:>11,} {f32:>11,} {f32 - f64:>14,} B ({(f32 - f64) / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
