"""`roadside ota build|key`: make over-the-air update bundles and the key that authenticates
them (docs/TOOLS.md, PROTOCOL.md 2.6). The gateway sends bundles (`ota push`, `ota status`:
the gateway side adds them here)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from roadside.gateway.ota_bundle import KEY_LEN, BundleError, load_key

from ..errors import ToolError
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
      --version 1.24.1 -o mp-1.24.1.rsb        a MicroPython app image for the OTA partition"""


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
