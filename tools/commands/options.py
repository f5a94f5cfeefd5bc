"""Options shared by the commands that open a port, as esptool and mpremote users expect them.

Every command that opens a node's port takes it both ways: `roadside config get /dev/ttyUSB0`
and `roadside config get -p /dev/ttyUSB0` (`--port`), the same for monitor, flash and deploy;
and `-b/--baud`. The options carry shtab's `complete` attribute: `roadside completion`
completes ports (`roadside nodes --names`) and files from it.
"""

from __future__ import annotations

import argparse
from typing import Any

import shtab

from ..errors import ToolError

# `roadside completion` completes --port with the attached USB serial devices
PORTS = shtab.cmd("roadside nodes --names")
FILE = shtab.FILE
DIRECTORY = shtab.DIRECTORY

PORT_HELP = ("the port: a device (/dev/ttyUSB0) or pyserial URL (socket://HOST:PORT, "
             "rfc2217://HOST:PORT)")


def complete(action: argparse.Action, what: Any) -> argparse.Action:
    """Tell `roadside completion` what `action`'s value is (PORTS, FILE, DIRECTORY)."""
    action.complete = what  # type: ignore[attr-defined]  # read by shtab
    return action


def add_port(parser: argparse.ArgumentParser, group: Any = None, *, positional: bool = True,
             help: str = PORT_HELP) -> None:
    """`-p/--port P` (in `group` when given) and, with `positional`, a PORT positional slot
    (dest `port_arg`); `port_of(args)` gives the one used."""
    complete((group or parser).add_argument("-p", "--port", metavar="P", help=help), PORTS)
    if positional:
        complete(parser.add_argument("port_arg", metavar="PORT", nargs="?",
                                     help="the same as --port"), PORTS)


def add_baud(parser: argparse.ArgumentParser, default: int, help: str | None = None) -> None:
    parser.add_argument("-b", "--baud", type=int, default=default, metavar="N",
                        help=help or "baud rate of the port (default %(default)s)")


def port_of(args: argparse.Namespace) -> str | None:
    """The port given as PORT or as -p/--port (the same one twice is fine)."""
    positional = getattr(args, "port_arg", None)
    option = getattr(args, "port", None)
    if positional and option and positional != option:
        raise ToolError(f"two ports given ({positional} and --port {option}): give one")
    return option or positional
