"""The node config schema, from the firmware itself: firmware/roadside_node/config.py.

There is one schema (the firmware's TABLE, every role's roles/<role>_keys.py, check() and
the cross-key rules); the tools load those very files under CPython (every role's keys: a
node loads only its own role's), so `roadside deploy --set` and `roadside config set|apply`
refuse exactly what the node would refuse, with the node's own message (key, bad value, what
is allowed), before anything is sent.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from functools import cache
from pathlib import Path
from typing import Any

from roadside.gateway import ids
from roadside.tools import resources

from ..errors import ToolError

FIRMWARE = resources.FIRMWARE
CONFIG_PY = FIRMWARE / "roadside_node" / "config.py"
_PKG = "_roadside_fw_schema"


class ConfigValueError(ToolError):
    """A setting the node's config schema refuses (names key, value and what is allowed)."""


@cache
def firmware_config() -> types.ModuleType:
    """firmware/roadside_node/config.py as a CPython module (the journal import of
    config_edit.py stubbed, roles/__init__.py loaded as it is; config.py imports
    config_edit.py and roles/<role>_keys.py from the firmware's directory)."""
    if not CONFIG_PY.is_file():
        raise ToolError(f"{CONFIG_PY} is missing: the firmware is not in this checkout")
    pkg = types.ModuleType(_PKG)
    pkg.__path__ = [str(CONFIG_PY.parent)]  # config.py imports config_edit.py and roles/*_keys.py
    journal = types.ModuleType(f"{_PKG}.journal")

    def write_atomic(path: str, text: str) -> None:  # never called by the tools
        Path(path).write_text(text)

    journal.write_atomic = write_atomic  # type: ignore[attr-defined]
    sys.modules.setdefault(_PKG, pkg)
    sys.modules.setdefault(f"{_PKG}.journal", journal)
    # the firmware's list of roles (config.py validates `role` against it): plain data
    _load("roles", CONFIG_PY.parent / "roles" / "__init__.py")
    return _load("config", CONFIG_PY)


def _load(name: str, path: Path) -> types.ModuleType:
    """A firmware module as `_PKG.name` (once: the modules of the private package stay)."""
    if f"{_PKG}.{name}" in sys.modules:
        return sys.modules[f"{_PKG}.{name}"]
    spec = importlib.util.spec_from_file_location(f"{_PKG}.{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (120, 1.5, true, [[1, 2]], "x"), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_assignment(item: str) -> tuple[str, Any]:
    """`key=value` -> (key, parsed value)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigValueError(f"{item!r}: expected key=value, e.g. thresholds.alarm_cm=150")
    return key.strip(), parse_value(raw.strip())


def canonical(key: str) -> str:
    """The firmware's name for a key (alarm_cm -> thresholds.alarm_cm)."""
    return str(firmware_config().canonical(key))


def check(key: str, value: Any) -> tuple[str, Any]:
    """(canonical key, normalised value), or ConfigValueError with the firmware's message."""
    cfg = firmware_config()
    key = canonical(key)
    if key == "node_id" and not ids.valid(value):   # the gateway refuses it at HELLO
        raise ConfigValueError(f"node_id: bad value {ids.shown(value)}; use {ids.RULE}")
    try:
        return key, cfg.check(key, value)
    except cfg.ConfigError as exc:
        raise ConfigValueError(str(exc)) from None


def get(data: dict[str, Any], key: str) -> Any:
    """A dotted key's value in a nested config, or None."""
    return firmware_config()._get(data, canonical(key))


def put(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a nested config."""
    firmware_config()._put(data, canonical(key), value)


def validate(data: dict[str, Any]) -> dict[str, Any]:
    """Validate a whole node config (every key and the cross-key rules); returns it."""
    cfg = firmware_config()
    conf = cfg.Config(json.loads(json.dumps(data)), "config.json")
    try:
        conf.validate(every_role=True)
    except cfg.ConfigError as exc:
        raise ConfigValueError(str(exc)) from None
    return dict(conf.data)


def effective(data: dict[str, Any]) -> dict[str, Any]:
    """The config with the firmware's defaults filled in (what config.get returns): every
    node's keys and its role's (data's role, water when none)."""
    return dict(firmware_config().Config(json.loads(json.dumps(data))).effective())


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"thresholds": {"alarm_cm": 150}} -> {"thresholds.alarm_cm": 150} (hw and sim kept
    as whole sections: they are written by deploy, not set key by key)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and not prefix and k not in ("hw", "sim"):
            out.update(flatten(v, f"{name}."))
        else:
            out[name] = v
    return out


def settable_keys() -> list[str]:
    """Every key config.set accepts (config_edit.py's list, beside config.py)."""
    firmware_config()
    return list(_load("config_edit", CONFIG_PY.parent / "config_edit.py").all_keys())
