"""Files that hold secrets (a node's BLE key, an uplink token or password, the command API
token): say so when others than the owner may read them.

Used on the gateway (gateway.toml's secret_file, token_file, password_file) and on the
installer's laptop (the key files of `roadside config secret` and `--ble`). A warning, not a
refusal: a file shared with a service's group on purpose is the operator's choice.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def readable_by_others(path: Path) -> str | None:
    """None when only the owner may read `path` (or it cannot be looked at), else a one-line
    warning naming the file, its mode and the fix."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return None
    return (f"secret file {path} is readable by others (mode {stat.S_IMODE(mode):04o});"
            f" run `chmod 600 {path}`")


def key_bytes(data: bytes, length: int) -> bytes | None:
    """A key file's content as `length` raw bytes: the file holds them raw, or as hex digits
    (whitespace around them ignored); None when it is neither."""
    if len(data) == length:
        return data
    try:
        raw = bytes.fromhex(data.decode("ascii", "replace").strip())
    except ValueError:
        return None
    return raw if len(raw) == length else None
