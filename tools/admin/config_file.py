"""The gateway's config file, read by the gateway's own loader; its errors as ToolError."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ToolError

if TYPE_CHECKING:
    from roadside.gateway.config import GatewayConfig


def load(path: Path) -> GatewayConfig:
    """The config at `path`, checked as the daemon checks it (imported here, not at startup:
    `roadside --help` does not load the gateway)."""
    from roadside.gateway.config import ConfigError
    from roadside.gateway.config import load as load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise ToolError(f"{path}: {exc}") from exc
