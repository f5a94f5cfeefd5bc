"""`roadside gateway run|check --config FILE`: the gateway daemon, and its config checker."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..admin import accept, api, config_file, dead_letters, queue_check
from ..errors import ToolError

EXAMPLES = """examples:
  roadside gateway check --config gateway.toml   validate, print a summary or the one-line error
  roadside gateway run --config gateway.toml     run the daemon until Ctrl-C / SIGTERM
  roadside gateway unit > /etc/systemd/system/roadside-gateway.service   the systemd unit
  roadside gateway cmd --config gateway.toml wl-0003 config.set key=alarm_cm value=120
  roadside gateway commands --config gateway.toml   the command audit log, newest first
  roadside gateway ports                          serial ports with USB VID:PID and serial
  roadside gateway accept --config gateway.toml /dev/ttyUSB0 wl-0004   take a refused node id
  roadside gateway dead-letters list --config gateway.toml        batches a backend refused
  roadside gateway dead-letters replay --config gateway.toml ID   POST one again, same key"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gateway",
        help="run the gateway daemon or check its config",
        description="The gateway daemon: serial links to nodes, SQLite queue, HTTP uplinks.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True
    for name, text in (("run", "run the daemon"), ("check", "validate a config file")):
        a = actions.add_parser(name, help=text, description=text, epilog=EXAMPLES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        a.add_argument("--config", required=True, type=Path, metavar="FILE",
                       help="gateway TOML config")
        a.set_defaults(handler=handle_run if name == "run" else handle_check)
        if name == "check":
            a.add_argument("--json", action="store_true",
                           help="print the result as one JSON document (ok, error, the"
                           " sections, warnings)")
    u = actions.add_parser("unit", help="print the systemd unit (Type=notify, watchdog)",
                           description="Print the gateway's systemd unit file (docs/GATEWAY.md"
                           " says how to install it).")
    u.set_defaults(handler=handle_unit)
    api.add_parsers(actions, EXAMPLES)
    dead_letters.add_parser(actions, EXAMPLES)
    accept.add_parser(actions, EXAMPLES)


def handle_run(args: argparse.Namespace) -> int:
    from roadside.gateway import daemon  # the daemon's imports only when it runs

    config = config_file.load(args.config)
    return daemon.run(config)


def handle_unit(args: argparse.Namespace) -> int:
    from ..resources import SYSTEMD_UNIT

    print(SYSTEMD_UNIT.read_text(encoding="utf-8"), end="")
    return 0


def handle_check(args: argparse.Namespace) -> int:
    if not getattr(args, "json", False):
        config = config_file.load(args.config)
        found = warnings(config)
        # A damaged queue file does not fail the check (exit 0): it runs as systemd's
        # ExecStartPre, and the daemon recovers the file when it starts.
        damaged = any(" is damaged (" in w for w in found)
        print(f"{args.config}: OK" + (", but the queue file is damaged (see below)" if damaged
                                     else ""))
        for line in summarise(config):
            print(f"  {line}")
        for line in found:
            print(f"warning: {line}")
        return 0
    try:
        config = config_file.load(args.config)
    except ToolError as exc:
        print(json.dumps({"config": str(args.config), "ok": False, "error": str(exc),
                          "warnings": []}))
        return 2
    print(json.dumps({"config": str(args.config), "ok": True, **describe(config),
                      "warnings": warnings(config)}, indent=2))
    return 0


# [[uplink]] keys by type: `check` shows those that apply (and are set) only.
_UPLINK_COMMON = ("type", "name", "url", "timeout_s", "backoff_initial_s", "backoff_max_s",
                  "ca_file", "cert_file", "key_file")
_UPLINK_KEYS = {
    "http": (*_UPLINK_COMMON, "gzip", "token_file", "token_env"),
    "mqtt": (*_UPLINK_COMMON, "username", "password_file", "password_env", "topic",
             "protocol", "client_id", "keepalive_s", "command_topic", "reply_topic",
             "command_allow"),
}
_LINK_KEYS = {
    "serial": ("type", "port", "usb_serial", "vid_pid", "baudrate", "node"),
    "ble": ("type", "node", "address", "key_path"),
}


def _plain(value: Any) -> Any:
    """A config value as JSON has it: paths as strings, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _table(obj: Any, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The set keys of one config table (None and empty lists left out: not set)."""
    if keys is None:
        keys = tuple(f.name for f in dataclasses.fields(obj))
    out = {}
    for key in keys:
        value = getattr(obj, key, None)
        if value is None or value == ():
            continue
        out["secret_file" if key == "key_path" else key] = _plain(value)
    return out


def describe(config: Any) -> dict[str, Any]:
    """The loaded config as plain data, section by section (no secret, only where it is)."""
    doc: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "path":
            continue
        if f.name == "links":
            doc[f.name] = [_table(lc, _LINK_KEYS.get(lc.type)) for lc in value]
        elif f.name == "uplinks":
            doc[f.name] = [_table(uc, _UPLINK_KEYS.get(uc.type)) for uc in value]
        elif dataclasses.is_dataclass(value):
            doc[f.name] = _table(value)
        else:
            doc[f.name] = _plain(value)
    return doc


def summarise(config: Any) -> list[str]:
    """One line per section, one per link and uplink, with the keys set and that apply."""
    lines = []
    for key, value in describe(config).items():
        if isinstance(value, list):
            lines.append(f"{key}: {len(value)}")
            lines.extend(f"  - {_brief(v)}" for v in value)
        else:
            lines.append(f"{key}: {_brief(value)}")
    return lines


def _brief(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
                         for k, v in value.items())
    return str(value)


def warnings(config: Any) -> list[str]:
    """What loads but will not work as it stands: one line each, saying what to do."""
    out = []
    for i, lc in enumerate(config.links):
        if lc.type == "serial" and lc.port is not None and not os.path.exists(lc.port):
            out.append(f"link[{i}].port: {lc.port} does not exist (yet): plug the adapter"
                       f" in, or give the port by USB identity (usb_serial, vid_pid);"
                       f" `roadside gateway ports` lists the serial ports")
    out.extend(queue_check.queue_checks(config))   # the queue file's integrity, its disk
    return out
