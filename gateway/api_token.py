"""The command API's token: a random secret in data_dir/api.token, mode 0600.

The daemon makes it on its first start and keeps it across restarts; `roadside gateway cmd`
and `roadside gateway commands` read it and send it as `Authorization: Bearer TOKEN`. Who may
read the file may command the nodes (run the tools as the gateway's user, or with sudo); a
web page in the operator's browser cannot read it, which is what stops a cross-site request.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from . import secret_files
from .errors import ConfigError

log = logging.getLogger("roadside.gateway.status")

FILE_NAME = "api.token"


def path_in(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def read(path: Path) -> str:
    """The token in `path` (OSError when it cannot be read, ValueError when it is empty)."""
    token = path.read_text(encoding="ascii").strip()
    if not token:
        raise ValueError(f"{path} is empty")
    return token


def ensure(path: Path) -> str:
    """The token in `path`, made (0600, from os.urandom) when there is none yet;
    ConfigError saying what to check when it can be neither read nor made."""
    try:
        return _ensure(path)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ConfigError(f"command API token {path}: {reason}; the gateway's user must be"
                          f" able to create and read it in data_dir (or delete a damaged"
                          f" one)") from None


def _ensure(path: Path) -> str:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        warning = secret_files.readable_by_others(path)
        if warning:
            log.warning(f"command API token: {warning}")
        try:
            return read(path)
        except ValueError:   # an empty file (a cut during the first start): make it again
            path.unlink()
            return _ensure(path)
    token = secrets.token_hex(32)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    log.info(f"command API token written to {path} (mode 0600)")
    return token
