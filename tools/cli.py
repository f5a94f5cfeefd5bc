"""The `roadside` command line.

Each subcommand lives in its own module `roadside.tools.commands.<name>` that exposes
`register(subparsers)`: it adds its parser and sets `handler(args) -> int`. Adding a command
(flash, deploy, config, monitor, scan, nodes, ...) means adding one module and one name to
COMMANDS.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import interrupted
from .commands import (
    completion,
    config,
    demo,
    deploy,
    flash,
    fleet,
    gateway,
    monitor,
    nodes,
    ota,
    receiver,
    scan,
    sim,
)
from .errors import ToolError

# in the order `roadside --help` lists them
COMMANDS = (demo, receiver, sim, gateway, flash, fleet, nodes, deploy, config, ota, monitor,
            completion, scan)

EPILOG = """examples:
  roadside demo                          3 simulated nodes -> gateway -> receiver, live view
  roadside demo --nodes 2 --duration 10  run 10 s, then check every record arrived once
  roadside receiver --listen 127.0.0.1:8080 --db receiver.sqlite
  roadside sim --role water --count 3 --scenario flood
  roadside gateway check --config gateway.toml
  roadside gateway run --config gateway.toml
  roadside scan                          roadside nodes in Bluetooth LE range
  roadside config get --ble wl-0042      a node's config over BLE (authenticated)
  roadside monitor --ble wl-0042         a node's frames over BLE, decoded

`roadside COMMAND --help` shows each command's options and examples."""

EXIT_USAGE = 2


def version() -> str:
    """The installed package's version (its metadata, as pip shows it)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("roadside")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed: pip install -e .)"


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line on stderr (exit 2) instead of the usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="roadside",
        description="Edge toolkit for roadside infrastructure: nodes, gateway, receiver.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for command in COMMANDS:
        command.register(sub)
    parser.set_defaults(root_parser=parser)  # `roadside completion` walks the whole tree
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `roadside` script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    interrupted.clear()
    try:
        return int(args.handler(args))
    except ToolError as exc:
        sys.stderr.write(f"roadside {args.command}: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        # what was interrupted, and the state it left (interrupted.doing in the command)
        # on a terminal, after the "^C" it echoed
        sys.stderr.write(("\n" if sys.stderr.isatty() else "")
                         + interrupted.message(args.command) + "\n")
        return interrupted.EXIT_INTERRUPTED
    finally:
        interrupted.clear()


if __name__ == "__main__":
    sys.exit(main())
