"""`roadside gateway run|check --config FILE`: the gateway daemon, and its config checker."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..admin import accept, api, config_file, dead_letters

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
    config = config_file.load(args.config)
    print(f"{args.config}: OK")
    for line in summarise(config):
        print(f"  {line}")
    return 0


def summarise(config: Any) -> list[str]:
    """One line per top-level section of a (dataclass) config, whatever its exact shape."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        items = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    elif isinstance(config, dict):
        items = dict(config)
    else:
        items = {k: v for k, v in vars(config).items() if not k.startswith("_")}
    lines = []
    for key, value in items.items():
        if isinstance(value, list | tuple):
            lines.append(f"{key}: {len(value)}")
            lines.extend(f"  - {_brief(v)}" for v in value)
        else:
            lines.append(f"{key}: {_brief(value)}")
    return lines


def _brief(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ", ".join(f"{f.name}={getattr(value, f.name)}" for f in dataclasses.fields(value))
    return str(value)
