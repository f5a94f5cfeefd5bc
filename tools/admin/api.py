"""`roadside gateway cmd|commands|ports`: talk to a running gateway, list serial ports.

    roadside gateway cmd --config gateway.toml wl-0003 ping
    roadside gateway cmd --config gateway.toml wl-0003 config.set key=alarm_cm value=120
    roadside gateway commands --config gateway.toml        the audit log, newest first
    roadside gateway ports                                 serial ports with VID:PID, serial

`cmd` POSTs to the daemon's local API (`[status] listen`, loopback only), which sends the
COMMAND on the node's link, retries it and returns the node's REPLY. It sends the token the
daemon keeps in data_dir/api.token (mode 0600): run it as the gateway's user, or with sudo.
`key=value` args are JSON when they parse as JSON (120, true, null, "text", {...}) and text
otherwise.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from roadside.gateway import api_token, ids

from ..errors import ToolError

EXIT_OK = 0
EXIT_FAILED = 1     # the node answered with an error, or did not answer
DEFAULT_LISTEN = "127.0.0.1:8081"
COMMAND_NAMES = ("ping", "info", "config.get", "config.set", "reboot")


def add_parsers(actions: argparse._SubParsersAction, epilog: str) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    a = actions.add_parser(
        "cmd", help="send a command to a node through the running gateway",
        description="Send a command to a node through the running gateway and print its"
                    " reply. Commands (PROTOCOL.md 2.2): " + ", ".join(COMMAND_NAMES) + ".",
        epilog=epilog, formatter_class=fmt)
    a.add_argument("--config", required=True, type=Path, metavar="FILE",
                   help="gateway TOML config (for the [status] listen address)")
    a.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for a REPLY per attempt (default 2)")
    a.add_argument("--attempts", type=int, default=None, metavar="N",
                   help="attempts with the same request id (default 3)")
    a.add_argument("node", metavar="NODE", help="node id, e.g. wl-0003")
    a.add_argument("name", metavar="NAME", help="command: " + ", ".join(COMMAND_NAMES))
    a.add_argument("args", nargs="*", metavar="KEY=VALUE", help="command arguments")
    a.set_defaults(handler=handle_cmd)

    c = actions.add_parser("commands", help="show the command audit log of the running gateway",
                           description="The commands sent through the gateway, newest first.",
                           epilog=epilog, formatter_class=fmt)
    c.add_argument("--config", required=True, type=Path, metavar="FILE",
                   help="gateway TOML config (for the [status] listen address)")
    c.add_argument("--limit", type=int, default=20, metavar="N", help="rows (default 20)")
    c.set_defaults(handler=handle_commands)

    ports = actions.add_parser("ports", help="list serial ports with their USB VID:PID and serial",
                               description="Serial ports present, with the vid_pid and"
                                           " usb_serial to put in a [[link]].",
                               epilog=epilog, formatter_class=fmt)
    ports.set_defaults(handler=handle_ports)


def parse_args(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ToolError(f"argument {item!r}: must be KEY=VALUE, e.g. key=alarm_cm")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def _raw(config: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ToolError(f"{config}: no such file") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ToolError(f"{config}: {exc}") from exc


def token(config: Path) -> str:
    """The command API token from data_dir/api.token ([gateway] data_dir, relative to the
    config's directory, as the daemon takes it), read without loading the uplink secrets."""
    data_dir = Path(str(_raw(config).get("gateway", {}).get("data_dir", "data"))).expanduser()
    if not data_dir.is_absolute():
        data_dir = config.resolve().parent / data_dir
    path = api_token.path_in(data_dir)
    try:
        return api_token.read(path)
    except FileNotFoundError:
        raise ToolError(f"no command API token {path}: the gateway writes it when it starts;"
                        f" is it running with this config?") from None
    except PermissionError:
        raise ToolError(f"cannot read the command API token {path}: permission denied; run"
                        f" as the gateway's user (e.g. `sudo -u roadside roadside gateway"
                        f" ...`)") from None
    except (OSError, ValueError) as exc:
        raise ToolError(f"cannot read the command API token {path}: {exc}") from None


def base_url(config: Path) -> str:
    """http://HOST:PORT of the daemon's status server, from [status] listen only (so `cmd`
    needs neither the uplink secrets nor write access to data_dir)."""
    raw = _raw(config)
    listen = raw.get("status", {}).get("listen", DEFAULT_LISTEN)
    host, _, port = str(listen).rpartition(":")
    if not host or not port.isdigit() or port == "0":
        raise ToolError(f"{config}: status.listen: need a fixed HOST:PORT to reach the"
                        f" daemon, got {listen!r}")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "[::1]"}.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def request(url: str, body: dict[str, Any] | bytes | None, timeout: float,
             api_key: str) -> tuple[int, Any]:
    """GET (body None) or POST a JSON object or raw bytes (an OTA bundle) to the daemon's
    local API; (HTTP status, the JSON answer)."""
    raw = isinstance(body, bytes)
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/octet-stream" if raw
                                          else "application/json",
                                          "Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {"error": exc.reason}
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ToolError(f"cannot reach the gateway at {url}: {reason}; is it running"
                        f" (`systemctl status roadside-gateway`) with this config?") from exc


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def handle_cmd(args: argparse.Namespace) -> int:
    try:
        ids.check(args.node, "NODE")
    except ids.BadNodeId as exc:
        raise ToolError(str(exc)) from None
    url = f"{base_url(args.config)}/nodes/{urllib.parse.quote(args.node, safe='')}/commands"
    body: dict[str, Any] = {"name": args.name, "args": parse_args(args.args) or None,
                            "who": who()}
    if args.timeout is not None:
        body["timeout_s"] = args.timeout
    if args.attempts is not None:
        body["attempts"] = args.attempts
    per_try = args.timeout or 2.0
    status, doc = request(url, body, per_try * (args.attempts or 3) + 10, token(args.config))
    if status == 200 and doc.get("ok"):
        print(json.dumps(doc["result"], indent=2, sort_keys=True))
        return EXIT_OK
    if status == 200:
        sys.stderr.write(f"roadside gateway cmd: {args.node} refused {args.name}"
                         f" (request {doc['request_id']}): {doc['error']}\n")
        return EXIT_FAILED
    message = doc.get("error", doc) if isinstance(doc, dict) else doc
    if status == 504:
        sys.stderr.write(f"roadside gateway cmd: {message}\n")
        return EXIT_FAILED
    raise ToolError(f"{message} (HTTP {status})")


def handle_commands(args: argparse.Namespace) -> int:
    status, rows = request(f"{base_url(args.config)}/commands?limit={args.limit}", None, 10,
                            token(args.config))
    if status != 200:
        raise ToolError(f"{rows.get('error', rows)} (HTTP {status})")
    for r in rows:
        print(json.dumps(r, sort_keys=True))
    return EXIT_OK


def handle_ports(_args: argparse.Namespace) -> int:
    from roadside.gateway.links.usb import describe_ports

    lines = describe_ports()
    for line in lines:
        print(line)
    if not lines:
        print("no serial ports found (is the adapter plugged in?)", file=sys.stderr)
    return EXIT_OK
