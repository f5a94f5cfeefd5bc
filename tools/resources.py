"""Where the tools find what is not Python of their own: the node firmware, the board files,
the scenarios and the protocol CDDL, in a checkout and in an installed wheel alike.

The wheel ships them as package data laid out as in the checkout, beside the tools package:

    checkout (and `pip install -e`)      installed wheel (site-packages)
    tools/        roadside.tools          roadside/tools/
    firmware/     node firmware sources   roadside/firmware/   (.py only, no mypy.ini)
    boards/       board files             roadside/boards/*.toml
    scenarios/    sim scenarios           roadside/scenarios/ROLE/*.json
    docs/protocol.cddl                    roadside/docs/protocol.cddl
    deploy/systemd/*.service              roadside/deploy/systemd/   (the gateway's unit)

so every path is ROOT / the same relative path, ROOT being the directory above the tools
package. The one difference: the precompiled firmware (mpy-cross output) goes to build/mpy in
a checkout, and to the user's cache directory for an installed wheel, whose site-packages may
not be writable.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # this file is roadside.tools' top module
CHECKOUT = (ROOT / "pyproject.toml").is_file()  # False: an installed wheel
FIRMWARE = ROOT / "firmware"
BOARDS = ROOT / "boards"
SCENARIOS = ROOT / "scenarios"
PROTOCOL_CDDL = ROOT / "docs" / "protocol.cddl"
SYSTEMD_UNIT = ROOT / "deploy" / "systemd" / "roadside-gateway.service"


def _cache_dir() -> Path:
    """$XDG_CACHE_HOME/roadside (default ~/.cache/roadside)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "roadside"


def mpy_dir() -> Path:
    """Where mpy-cross output for this firmware goes: build/mpy in a checkout; for an
    installed wheel a cache directory of its own per install location (a reinstall gives the
    sources new times, so build_mpy compiles them again)."""
    if CHECKOUT:
        return ROOT / "build" / "mpy"
    tag = hashlib.sha256(str(FIRMWARE).encode()).hexdigest()[:12]
    return _cache_dir() / f"mpy-{tag}"
