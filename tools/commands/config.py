"""`roadside config get|set|apply (PORT | --ble NODE) ...`: a node's settings over its data
link, the serial port or an authenticated Bluetooth LE session.

Uses the protocol's commands (config.get, config.set; PROTOCOL.md 2.2), not the REPL, so it
works on a running node without stopping it. Every value is checked against the firmware's
own config schema (tools/node/schema.py) before anything is sent, and the whole resulting
config (cross-key rules: alert_cm < alarm_cm < critical_cm ...) too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from roadside.gateway import ble_auth, ids, secret_files

from .. import interrupted
from ..errors import ToolError
from ..node import ble_transport, schema
from ..node.link import BAUDRATE, CommandFailed, NodeLink, open_link
from . import options

EXAMPLES = """examples:
  roadside config get /dev/ttyUSB0                  the whole config (defaults filled in)
  roadside config get /dev/ttyUSB0 thresholds.alarm_cm
  roadside config set /dev/ttyUSB0 thresholds.alarm_cm=150 report_interval_s=30
  roadside config set /dev/ttyUSB0 node_id=wl-0042 --json
  roadside config apply /dev/ttyUSB0 site-17.toml   shows the changes, asks, then sets them
  roadside config apply /dev/ttyUSB0 site-17.toml --yes
  roadside config get --ble wl-0042                 over Bluetooth LE (key file:
                                                    ~/.config/roadside/secrets/wl-0042.key)
  roadside config set --ble wl-0042 --secret-file wl-0042.key thresholds.alarm_cm=150
  roadside config secret /dev/ttyUSB0               provision the node's BLE secret (serial
                                                    only): a new random key, saved 0600 in
                                                    ~/.config/roadside/secrets/NODE.key
  roadside config secret /dev/ttyUSB0 --secret-file site-17/wl-0042.key --resend
                                                    an existing key (sent only with --resend)

A settings file is TOML; tables are dotted keys:
  node_id = "wl-0042"
  report_interval_s = 30
  [thresholds]
  alert_cm = 90
  alarm_cm = 140

PORT is the node's data port (the gateway's end of its link), not its REPL when those
differ. --ble NODE instead finds the node by its advertisement (`roadside scan`), connects
and authenticates with its secret (the node takes one connection at a time: not while a
gateway holds it). Bad values are refused before sending, naming the key, the value and what
is allowed."""

SECRET_EXAMPLES = """examples:
  roadside config secret /dev/ttyUSB0               a new random key, saved 0600 in
                                                    ~/.config/roadside/secrets/NODE.key
  roadside config secret -p /dev/ttyUSB0 --secret-file site-17/wl-0042.key --resend
                                                    an existing key (sent only with --resend)
  roadside config secret /dev/ttyUSB0 --new         rotate: a new key replaces the file (copy
                                                    it to the gateway's secret_file)

Serial only: the node refuses secret.set over the air."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="read or change a node's settings over its data link",
        description="Read or change a node's settings with the protocol's config.get and "
                    "config.set commands, validated against the firmware's config schema "
                    "before anything is sent.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    serial_only = argparse.ArgumentParser(add_help=False)
    options.add_port(serial_only, help="the node's data port (device or URL), as PORT")
    options.add_baud(serial_only, BAUDRATE)
    serial_only.add_argument("--json", action="store_true", help="print the result as JSON")
    serial_only.add_argument("--timeout", type=float, default=2.0, metavar="S",
                             help="seconds per attempt before a command is sent again "
                                  "(default %(default)s; 3 attempts)")
    common = argparse.ArgumentParser(add_help=False, parents=[serial_only])
    ble_transport.add_arguments(common)
    target = "([-p] PORT | --ble NODE [--secret-file FILE])"
    g = verbs.add_parser("get", parents=[common], help="print the config, or one key",
                         usage=f"%(prog)s {target} [KEY] [--json]",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("key", nargs="?", help="a key (dotted for sections: thresholds.alarm_cm)")
    g.set_defaults(handler=handle_get)
    s = verbs.add_parser("set", parents=[common], help="set one or more keys",
                         usage=f"%(prog)s {target} KEY=VALUE ... [--json]",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("settings", nargs="+", metavar="KEY=VALUE",
                   help="values are JSON when they parse: 150, 1.5, true, [[1,2]], else text")
    s.set_defaults(handler=handle_set)
    a = verbs.add_parser("apply", parents=[common], help="apply a TOML settings file",
                         usage=f"%(prog)s {target} FILE [--yes] [--json]",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.complete(a.add_argument("file", type=Path, help="TOML settings file"), options.FILE)
    a.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    a.set_defaults(handler=handle_apply)
    k = verbs.add_parser(   # serial only: no --ble here (the node refuses secret.set over BLE)
        "secret", parents=[serial_only], help="provision the node's BLE secret over serial",
        usage="%(prog)s [-p] PORT [--secret-file FILE] [--new | --resend] [--json]",
        description="Give the node its 32-byte BLE secret with the secret.set command, over "
                    "the serial cable only (the node refuses it over the air). The key file "
                    "(default ~/.config/roadside/secrets/NODE.key) is made from os.urandom "
                    "and saved mode 0600; copy it to the gateway's secret_file. When it "
                    "exists already it is sent only with --resend. The node answers a "
                    "fingerprint, checked against the file's.",
        epilog=SECRET_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.complete(k.add_argument(
        "--secret-file", metavar="FILE",
        help=f"the key file to write (or send, with --resend); default "
             f"{ble_transport.SECRETS_DIR}/NODE.key"), options.FILE)
    k.add_argument("--new", action="store_true",
                   help="replace an existing key file with a new random secret (rotation: "
                        "the gateway needs the new file too)")
    k.add_argument("--resend", action="store_true",
                   help="send the key file that exists already for this node id (without it "
                        "an existing secret is never sent: a device claiming another node's "
                        "id would get that node's secret)")
    # not offered (help hides it), only refused with the reason
    k.add_argument("--ble", metavar="NODE", help=argparse.SUPPRESS)
    k.set_defaults(handler=handle_secret, ble_timeout=None)
    o = verbs.add_parser(
        "ota-key", parents=[serial_only], help="give the node the over-the-air update key",
        usage="%(prog)s [-p] PORT [--key-file FILE] [--json]",
        description="Send the ota key (`roadside ota key` makes it; the same for every node "
                    "that takes the bundles built with it) with the secret.set command, over "
                    "the serial cable only. The node answers its fingerprint, checked here.")
    options.complete(o.add_argument(
        "--key-file", type=Path, default=Path.home() / ".config" / "roadside" / "ota.key",
        metavar="FILE", help="the ota key (default %(default)s)"), options.FILE)
    o.add_argument("--ble", metavar="NODE", help=argparse.SUPPRESS)
    o.set_defaults(handler=handle_ota_key, ble_timeout=None, secret_file=None)


def _target(args: argparse.Namespace) -> None:
    """The node: PORT, -p/--port P or --ble NODE, one of them. With an option naming it, the
    optional PORT slot that argparse filled is the verb's first argument (the KEY of get, a
    KEY=VALUE of set)."""
    ble = getattr(args, "ble", None)
    if args.port and ble:
        raise ToolError(f"give --port {args.port} or --ble {ble}, not both")
    if not args.port and not ble:
        if not args.port_arg:
            raise ToolError("give the node's data PORT (or -p PORT), or --ble NODE for "
                            "Bluetooth LE")
        args.port = args.port_arg
        return
    extra = args.port_arg
    args.port_arg = None
    if extra is None or extra == args.port:
        return
    if args.handler is handle_get and args.key is None:
        args.key = extra
    elif args.handler is handle_set and "=" in extra:
        args.settings.insert(0, extra)
    else:
        named = f"--ble {ble}" if ble else f"--port {args.port}"
        raise ToolError(f"give PORT ({extra}) or {named}, not both")


def _open(args: argparse.Namespace) -> NodeLink:
    return open_link(args.port, args.ble, args.secret_file, args.ble_timeout,
                     baudrate=args.baud)


# -- the work, as functions the tests call ----------------------------------------------------

def read_settings_file(path: Path) -> dict[str, Any]:
    """A TOML settings file -> {dotted key: value}, each checked against the schema."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ToolError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ToolError(f"{path}: not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in schema.flatten(data).items():
        try:
            k, v = schema.check(key, value)
        except schema.ConfigValueError as exc:
            raise schema.ConfigValueError(f"{path}: {exc}") from None
        out[k] = v
    return out


def plan(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (current, new)} for the keys whose value changes; the resulting whole config
    is validated (cross-key rules) before anything is sent."""
    trial = json.loads(json.dumps(current))
    changes: dict[str, tuple[Any, Any]] = {}
    for key, value in wanted.items():
        k, v = schema.check(key, value)
        old = current.get(k) if k in ("node_id", "role", "board") else schema.get(current, k)
        if old != v or type(old) is not type(v):
            changes[k] = (old, v)
        if k in ("node_id", "role", "board"):
            trial[k] = v
        else:
            schema.put(trial, k, v)
    schema.validate(trial)
    return changes


def send(link: NodeLink, changes: dict[str, tuple[Any, Any]], timeout: float) -> dict[str, Any]:
    """config.set each change; a key the node refuses only because of the order (alarm_cm
    above the old critical_cm) is tried again after the others. Returns {key: stored}."""
    pending = list(changes)
    done: dict[str, Any] = {}
    step = interrupted.current()
    while pending:
        refused: list[tuple[str, str]] = []
        for key in pending:
            if step is not None:
                step.update(f"setting {key} on {link.port}",
                            (f"the node keeps what it acknowledged ({', '.join(done)}); "
                             if done else "nothing was acknowledged yet; ")
                            + f"{key} may or may not be set: run the same command again "
                            "(it sets only what still differs)")
            try:
                done[key] = link.command("config.set", {"key": key, "value": changes[key][1]},
                                         attempt_timeout=timeout)
            except CommandFailed as exc:
                refused.append((key, str(exc)))
        if len(refused) == len(pending):
            applied = f" (applied: {', '.join(done)})" if done else ""
            key, why = refused[0]
            raise CommandFailed(f"the node refused {key}: {why}{applied}")
        pending = [k for k, _ in refused]
    return done


def _current(link: NodeLink, timeout: float) -> dict[str, Any]:
    cfg = link.command("config.get", attempt_timeout=timeout)
    if not isinstance(cfg, dict):
        raise ToolError(f"config.get on {link.port} returned {cfg!r}, not a map")
    return cfg


def _fmt(v: Any) -> str:
    return "(unset)" if v is None else json.dumps(v)


def diff_lines(changes: dict[str, tuple[Any, Any]]) -> list[str]:
    width = max((len(k) for k in changes), default=0)
    return [f"  {k:<{width}}  {_fmt(old)} -> {_fmt(new)}" for k, (old, new) in changes.items()]


# -- handlers -----------------------------------------------------------------------------------

def handle_get(args: argparse.Namespace) -> int:
    _target(args)
    key = schema.canonical(args.key) if args.key else None
    with interrupted.doing(f"reading the config of {args.port or 'ble:' + args.ble}",
                           "nothing was changed"), _open(args) as link:
        value = link.command("config.get", {"key": key} if key else None,
                             attempt_timeout=args.timeout)
    if key and "." in key and isinstance(value, dict):
        value = schema.get(value, key)
    if args.json:
        print(json.dumps(value if not key else {key: value}, indent=2, sort_keys=True))
    elif key:
        print(json.dumps(value))
    else:
        for k, v in sorted(schema.flatten(value).items()):
            print(f"{k} = {json.dumps(v)}")
    return 0


def handle_set(args: argparse.Namespace) -> int:
    _target(args)
    wanted = dict(schema.parse_assignment(s) for s in args.settings)
    for key, value in wanted.items():  # refused here, before the port is even opened
        schema.check(key, value)
    with interrupted.doing(f"reading the config of {args.port or 'ble:' + args.ble}",
                           "nothing was changed"), _open(args) as link:
        changes = plan(_current(link, args.timeout), wanted)
        done = send(link, changes, args.timeout)
    _report(args, link.port, changes, done)
    return 0


def handle_apply(args: argparse.Namespace) -> int:
    _target(args)
    wanted = read_settings_file(args.file)
    with interrupted.doing(f"reading the config of {args.port or 'ble:' + args.ble}",
                           "nothing was changed"), _open(args) as link:
        changes = plan(_current(link, args.timeout), wanted)
        if not changes:
            _report(args, link.port, changes, {})
            return 0
        if not args.json or not args.yes:
            sys.stderr.write(f"{link.port}: {len(changes)} change(s) from {args.file}:\n")
            sys.stderr.write("\n".join(diff_lines(changes)) + "\n")
        if not args.yes:
            if not sys.stdin.isatty():
                raise ToolError("not applied: confirm with --yes (stdin is not a terminal)")
            sys.stderr.write("apply? [y/N] ")
            sys.stderr.flush()
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                sys.stderr.write("not applied\n")
                return 1
        done = send(link, changes, args.timeout)
    _report(args, link.port, changes, done)
    return 0


def handle_secret(args: argparse.Namespace) -> int:
    if args.ble:
        raise ToolError("the secret is written over the serial cable only (the node refuses "
                        "secret.set over BLE): give the node's data PORT")
    _target(args)
    with _open(args) as link:
        info = link.command("info", attempt_timeout=args.timeout)
        node = info.get("node") if isinstance(info, dict) else None
        if node is None or node == "":
            raise ToolError(f"{link.port}: the node has no node_id yet; set it first with "
                            f"`roadside config set {link.port} node_id=...`")
        try:   # the id becomes a file name: ../../x must not
            ids.check(node, f"{link.port}: the device")
        except ids.BadNodeId as exc:
            raise ToolError(f"{exc}; no secret sent. Is this a roadside node? Set a valid id "
                            f"with `roadside config set {link.port} node_id=...`") from None
        path = ble_transport.secret_path(node, args.secret_file)
        made = args.new or not path.exists()
        if not made and not args.resend:
            raise ToolError(f"{node} has a key file already ({path}); not sent again: a device "
                            f"claiming {node}'s id would receive {node}'s secret. If this is "
                            f"{node}, pass --resend (the same key) or --new (a new key; copy it "
                            f"to the gateway's secret_file)")
        if not made:
            _warn_shared(path)
        secret = os.urandom(ble_auth.SECRET_LEN) if made else ble_transport.load_secret(
            node, args.secret_file)[1]
        if made:
            write_key(path, secret)
        try:
            with interrupted.doing(
                    f"sending {node}'s secret on {link.port}",
                    f"the node may or may not have the key in {path}: run `roadside config "
                    f"secret {link.port} --secret-file {path} --resend`" if made and args.new
                    or not made else
                    "the node may or may not have a new secret: run the same command again"):
                reply = link.command("secret.set", {"secret": secret.hex()},
                                     attempt_timeout=args.timeout)
        except BaseException:
            if made and not args.new:   # a file the node never got would only mislead
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
    expected = ble_auth.fingerprint(secret)
    got = reply.get("fingerprint") if isinstance(reply, dict) else None
    if got != expected:
        raise ToolError(f"{node} answered fingerprint {got!r}, expected {expected} for {path}:"
                        " run the command again")
    if args.json:
        print(json.dumps({"port": link.port, "node": node, "secret_file": str(path),
                          "new": made, "fingerprint": expected}, indent=2))
    else:
        print(f"{node}: secret set (fingerprint {expected}); key file {path}"
              f"{' (new)' if made else ''}. The gateway's [[link]] secret_file for {node}"
              " must hold the same key.")
    return 0


def handle_ota_key(args: argparse.Namespace) -> int:
    from roadside.gateway.ota_bundle import BundleError, load_key

    if args.ble:
        raise ToolError("the ota key is written over the serial cable only (the node refuses "
                        "secret.set over BLE): give the node's data PORT")
    _target(args)
    try:
        key = load_key(args.key_file)
    except BundleError as exc:
        raise ToolError(str(exc)) from None
    _warn_shared(args.key_file)
    with _open(args) as link, interrupted.doing(
            f"sending the ota key on {link.port}",
            "the node may or may not have it: run the same command again"):
        reply = link.command("secret.set", {"secret": key.hex(), "for": "ota"},
                             attempt_timeout=args.timeout)
    expected = ble_auth.fingerprint(key)
    got = reply.get("fingerprint") if isinstance(reply, dict) else None
    if got != expected:
        raise ToolError(f"the node answered fingerprint {got!r}, expected {expected} for "
                        f"{args.key_file}: run the command again")
    if args.json:
        print(json.dumps({"port": link.port, "key_file": str(args.key_file),
                          "fingerprint": expected}, indent=2))
    else:
        print(f"{link.port}: ota key set (fingerprint {expected}) from {args.key_file}; the "
              f"node takes bundles built with `roadside ota build --key-file {args.key_file}`")
    return 0


def _warn_shared(path: Path) -> None:
    warning = secret_files.readable_by_others(path)
    if warning:
        sys.stderr.write(f"roadside: warning: {warning}\n")


def write_key(path: Path, secret: bytes, option: str = "--secret-file") -> None:
    """The key as 64 hex digits, mode 0600 from the start (directories 0700), atomically
    (`option` names the flag that picks another path, for the error)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret.hex() + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ToolError(f"cannot write the key file {path}: {exc.strerror}; pass "
                        f"{option} with a writable path") from None


def _report(args: argparse.Namespace, port: str, changes: dict[str, tuple[Any, Any]],
            done: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps({"port": port, "changed": {
            k: {"old": old, "new": done.get(k, new)} for k, (old, new) in changes.items()}},
            indent=2))
    elif not changes:
        print("nothing to change: the node already has these values")
    else:
        for k, (old, _) in changes.items():
            print(f"{k} = {json.dumps(done.get(k))}  (was {_fmt(old)})")
