"""`roadside ota build|key|push|status|cancel`: make over-the-air update bundles and the key that
authenticates them (docs/TOOLS.md, PROTOCOL.md 2.6), and roll a bundle out through a running
gateway (docs/GATEWAY.md "Updates over the air").

`push` uploads the bundle to the gateway's local API (POST /ota/rollouts, the command API's
token), then follows the rollout with a progress bar per node until it ends: exit 0 when
every node runs the new version, 1 when the rollout halted (the failing node and its reason
are printed). Ctrl-C stops following; the rollout goes on in the gateway (`ota status`);
`ota cancel` stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from roadside.gateway import api_token
from roadside.gateway.ota_bundle import KEY_LEN, BundleError, load_key

from ..admin import api
from ..errors import ToolError
from ..install.flash_progress import ProgressView
from ..ota import bundle
from . import config, options

EXAMPLES = """examples:
  roadside ota key                                  a new key, 0600 in ~/.config/roadside/ota.key
  roadside config ota-key /dev/ttyUSB0              give a node that key (serial only)
  roadside ota build app -o app-0.2.0.rsb --version 0.2.0
      the node package (firmware/roadside_node) compiled with mpy-cross, for every board
      and role, authenticated with the ota key
  roadside ota build app -o water.rsb --board roadside-water-level-r1 --role water
  roadside ota build firmware --image micropython.bin --board esp32-devkitc-v4 \\
      --version 1.24.1 -o mp-1.24.1.rsb        a MicroPython app image for the OTA partition
  roadside ota push app.rsb --config gateway.toml --node wl-0003     one node
  roadside ota push app.rsb --config gateway.toml --site --canary 2  every node, 2 first
  roadside ota push app.rsb --gateway http://127.0.0.1:8081 \\
      --token-file /var/lib/roadside/api.token --node wl-0003
  roadside ota status --config gateway.toml          the gateway's rollouts, newest first
  roadside ota status --config gateway.toml 4        rollout 4, node by node
  roadside ota cancel --config gateway.toml          stop the rollout that is running
  roadside ota cancel --config gateway.toml 4        stop rollout 4

A rollout offers the bundle to the canary nodes first (default 1) and to the rest only when
every canary runs the new version; the first failure (a refusal other than busy, a rollback,
a timeout) halts it; a node busy with an alarm is offered it again later. Cancelling stops
the chunks to nodes not yet switched; nodes already switched keep the new version. The
gateway keeps the rollout across its restarts."""

EXIT_OK = 0
EXIT_FAILED = 1
POLL_S = 0.5


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ota", help="make over-the-air update bundles and their key",
        description="Bundles carry the node app (.mpy files) or a MicroPython firmware image, "
                    "a manifest (version, boards, roles, sha256 per piece and of the whole) "
                    "and an HMAC-SHA256 of the manifest with the ota key the nodes hold.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    key_opt = argparse.ArgumentParser(add_help=False)
    options.complete(key_opt.add_argument(
        "--key-file", type=Path, default=bundle.DEFAULT_KEY, metavar="FILE",
        help="the ota key (default %(default)s)"), options.FILE)

    b = verbs.add_parser("build", parents=[key_opt], help="make a bundle (.rsb)",
                         usage="%(prog)s {app,firmware} -o FILE [options]",
                         description="Make an app or firmware bundle.", epilog=EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("kind", choices=("app", "firmware"),
                   help="app: the node package; firmware: a MicroPython image")
    options.complete(b.add_argument("-o", "--output", type=Path, required=True,
                                    metavar="FILE", help="the bundle to write (.rsb)"),
                     options.FILE)
    b.add_argument("--version", metavar="V",
                   help="dotted version, e.g. 0.2.0 (app: default the package's VERSION; "
                        "firmware: required)")
    b.add_argument("--board", action="append", metavar="B",
                   help="a board the bundle fits (repeat; app default: every board in boards/)")
    b.add_argument("--role", action="append", choices=bundle.ALL_ROLES,
                   help="a role the bundle carries (repeat; default: all)")
    options.complete(b.add_argument("--source", type=Path, default=bundle.PACKAGE,
                                    metavar="DIR", help="app: the roadside_node package "
                                    "(default %(default)s)"), options.FILE)
    options.complete(b.add_argument("--image", type=Path, metavar="FILE",
                                    help="firmware: the MicroPython app image "
                                         "(micropython.bin)"), options.FILE)
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(handler=handle_build)

    k = verbs.add_parser("key", parents=[key_opt], help="make a new ota key (0600)",
                         description="32 random bytes as 64 hex digits, mode 0600. Every node "
                                     "that should accept bundles built with it gets it with "
                                     "`roadside config ota-key PORT`.")
    k.add_argument("--new", action="store_true", help="replace an existing key file")
    k.set_defaults(handler=handle_key)
    fmt = argparse.RawDescriptionHelpFormatter
    push = verbs.add_parser("push", help="roll a bundle out to nodes through the gateway",
                              description="Upload a bundle to the gateway and follow the"
                                          " rollout node by node.", epilog=EXAMPLES,
                              formatter_class=fmt)
    push.add_argument("bundle", type=Path, metavar="BUNDLE", help="the .rsb file (ota build)")
    _gateway_args(push)
    who = push.add_mutually_exclusive_group(required=True)
    who.add_argument("--node", action="append", metavar="ID", dest="nodes",
                     help="a node to update (repeat for several; the order is the rollout's)")
    who.add_argument("--site", action="store_true", help="every node the gateway knows")
    push.add_argument("--canary", type=int, default=1, metavar="N",
                      help="nodes updated first; the rest only when they are done (default 1)")
    push.add_argument("--force", action="store_true",
                      help="let nodes take an older or equal version, or take it while"
                           " their role is in alarm")
    push.add_argument("--no-wait", action="store_true",
                      help="start the rollout and return (follow it with `ota status`)")
    push.set_defaults(handler=handle_push)

    st = verbs.add_parser("status", help="the gateway's rollouts, or one node by node",
                            description="Rollouts of the gateway, newest first.",
                            epilog=EXAMPLES, formatter_class=fmt)
    _gateway_args(st)
    st.add_argument("rollout", nargs="?", type=int, metavar="ROLLOUT", help="a rollout id")
    st.add_argument("--json", action="store_true", help="the JSON document")
    st.set_defaults(handler=handle_status)

    c = verbs.add_parser("cancel", help="stop a rollout (nodes already switched stay)",
                         description="Stop a running rollout: nodes not yet switched get no"
                                     " more chunks (they keep what they staged); nodes"
                                     " already switched keep the new version.",
                         epilog=EXAMPLES, formatter_class=fmt)
    _gateway_args(c)
    c.add_argument("rollout", nargs="?", type=int, metavar="ROLLOUT",
                   help="a rollout id (default: the one running)")
    c.set_defaults(handler=handle_cancel)


def _gateway_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, metavar="FILE",
                       help="the gateway's TOML config (its [status] listen and api.token)")
    where.add_argument("--gateway", metavar="URL",
                       help="the gateway's local API, e.g. http://127.0.0.1:8081")
    p.add_argument("--token-file", type=Path, metavar="FILE",
                   help="with --gateway: the gateway's data_dir/api.token (or set"
                        " ROADSIDE_API_TOKEN)")


def _target(args: argparse.Namespace) -> tuple[str, str]:
    """(base URL, API token) from --config, or --gateway with --token-file / the env."""
    if args.config is not None:
        return api.base_url(args.config), api.token(args.config)
    url = args.gateway.rstrip("/")
    if not url.startswith("http://"):
        raise ToolError(f"--gateway: give the local API as http://HOST:PORT, got {url!r}")
    if args.token_file is not None:
        try:
            return url, api_token.read(args.token_file)
        except (OSError, ValueError) as exc:
            raise ToolError(f"--token-file {args.token_file}: {exc}") from None
    env = os.environ.get("ROADSIDE_API_TOKEN")
    if env:
        return url, env.strip()
    raise ToolError("--gateway needs the API token: --token-file (the gateway's"
                    " data_dir/api.token) or ROADSIDE_API_TOKEN")


def _fail(status: int, doc: Any) -> ToolError:
    message = doc.get("error", doc) if isinstance(doc, dict) else doc
    return ToolError(f"{message} (HTTP {status})")


def handle_build(args: argparse.Namespace) -> int:
    try:
        key = load_key(args.key_file)
        if args.kind == "app":
            if args.image:
                raise ToolError("--image is for firmware bundles; an app bundle is built "
                                "from --source")
            b = bundle.build_app(key, version=args.version, source=args.source,
                                 board_names=args.board, roles=args.role)
        else:
            if not args.image or not args.version:
                raise ToolError("a firmware bundle needs --image micropython.bin and "
                                "--version (MicroPython's, e.g. 1.24.1)")
            b = bundle.build_firmware(key, args.image, args.version, args.board or [])
        bundle.write(b, args.output)
    except BundleError as exc:
        raise ToolError(str(exc)) from None
    out = {"bundle": str(args.output), "kind": b.kind, "version": b.version,
           "tag": b.tag.hex(), "size": len(b.payload), "pieces": len(b.pieces),
           "boards": b.manifest[2], "roles": b.manifest[3]}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.output}: {b.kind} {b.version}, tag {b.tag.hex()}, {len(b.payload)} "
              f"bytes in {len(b.pieces)} pieces, boards {', '.join(b.manifest[2])}")
    return 0


def handle_key(args: argparse.Namespace) -> int:
    path: Path = args.key_file
    if path.exists() and not args.new:
        raise ToolError(f"{path} exists: nodes given it accept bundles built with it; pass "
                        f"--new to replace it (then give every node the new key)")
    config.write_key(path, os.urandom(KEY_LEN), "--key-file")
    print(f"ota key written to {path} (mode 0600); give it to each node with "
          f"`roadside config ota-key PORT --key-file {path}`")
    return 0


def handle_push(args: argparse.Namespace) -> int:
    try:
        data = args.bundle.read_bytes()
    except OSError as exc:
        raise ToolError(f"{args.bundle}: {exc.strerror}; give the .rsb file that"
                        f" `roadside ota build` wrote") from None
    base, key = _target(args)
    query: list[tuple[str, str]] = [("canary", str(args.canary)), ("who", api.who())]
    query += [("site", "1")] if args.site else [("node", n) for n in args.nodes]
    if args.force:
        query.append(("force", "1"))
    status, doc = api.request(f"{base}/ota/rollouts?{urllib.parse.urlencode(query)}", data,
                              60, key)
    if status != 202:
        raise _fail(status, doc)
    rid = doc["id"]
    print(f"rollout {rid}: {doc['kind']} {doc['version']} to {len(doc['nodes'])} nodes"
          f" (canary {doc['canary']})", file=sys.stderr)
    if args.no_wait:
        print(json.dumps({"rollout": rid}))
        return EXIT_OK
    return _follow(base, key, rid, doc)


def _follow(base: str, key: str, rid: int, doc: dict[str, Any]) -> int:
    labels = [n["node"] for n in doc["nodes"]]
    finished: set[str] = set()
    try:
        with ProgressView(labels, stepped="receiving") as view:
            while True:
                for n in doc["nodes"]:
                    if n["node"] in finished:
                        continue
                    view.update(n["node"], n["state"], int(n.get("percent") or 0))
                    if n["state"] in ("done", "failed", "halted", "cancelled", "skipped"):
                        finished.add(n["node"])
                        view.finish(n["node"], ("ok " + doc["version"]) if n["state"] == "done"
                                    else f"{n['state']}: {n.get('reason') or ''}".rstrip(": "))
                if doc["state"] != "running":
                    break
                time.sleep(POLL_S)
                status, doc = api.request(f"{base}/ota/rollouts/{rid}", None, 10, key)
                if status != 200:
                    raise _fail(status, doc)
    except KeyboardInterrupt:
        print(f"stopped following; rollout {rid} goes on in the gateway (`roadside ota"
              f" status ... {rid}`)", file=sys.stderr)
        return EXIT_FAILED
    if doc["state"] == "done":
        print(f"rollout {rid} done: {len(labels)} nodes run {doc['version']}", file=sys.stderr)
        return EXIT_OK
    print(f"rollout {rid} {doc['state']}: {doc.get('reason')}", file=sys.stderr)
    return EXIT_FAILED


def handle_status(args: argparse.Namespace) -> int:
    base, key = _target(args)
    if args.rollout is not None:
        status, doc = api.request(f"{base}/ota/rollouts/{args.rollout}", None, 10, key)
        if status != 200:
            raise _fail(status, doc)
        docs = [doc]
    else:
        status, full = api.request(f"{base}/status", None, 10, key)
        if status != 200:
            raise _fail(status, full)
        docs = (full.get("ota") or {}).get("rollouts", [])
    if args.json:
        print(json.dumps(docs if args.rollout is None else docs[0], indent=2))
        return EXIT_OK
    if not docs:
        print("no rollouts since the gateway started", file=sys.stderr)
    for r in docs:
        print(f"rollout {r['id']}: {r['kind']} {r['version']} {r['state']}"
              + (f" ({r['reason']})" if r.get("reason") else ""))
        for n in r["nodes"]:
            pct = n.get("percent")
            print(f"  {n['node']:<12} {n['state']:<10}"
                  + (f" {pct:5.1f}%" if pct is not None else "")
                  + (f"  {n['reason']}" if n.get("reason") else ""))
    return EXIT_OK


def handle_cancel(args: argparse.Namespace) -> int:
    base, key = _target(args)
    which = "running" if args.rollout is None else str(args.rollout)
    status, doc = api.request(f"{base}/ota/rollouts/{which}/cancel", {"who": api.who()}, 10,
                              key)
    if status != 200:
        raise _fail(status, doc)
    kept = [n["node"] for n in doc["nodes"] if n["state"] in ("switching", "trial", "done")]
    stopped = [n["node"] for n in doc["nodes"] if n["state"] == "cancelled"]
    print(f"rollout {doc['id']} cancelled: {len(stopped)} nodes stopped"
          + (f"; {', '.join(kept)} switched already (they keep {doc['version']})"
             if kept else ""))
    return EXIT_OK
