"""Node ids: the one rule for every place an id enters (HELLO, gateway.toml, the CLI, key file
names): letters, digits, `-` and `_`, 1 to 32 characters.

An id becomes a file name (the installer's key file NODE.key), a /metrics label and a log
field, so anything else (`../../x`, a newline, 1,000 characters) is refused where it enters.
"""

from __future__ import annotations

import logging
import re
from typing import Any, TypeGuard

log = logging.getLogger("roadside.gateway.session")

MAX_LEN = 32
_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
RULE = "letters, digits, '-' and '_', 1 to 32 characters (e.g. wl-0042)"


class BadNodeId(ValueError):
    """A node id that breaks the rule; str() says which id (shortened) and the rule."""


def valid(node: object) -> TypeGuard[str]:
    return isinstance(node, str) and _NODE_ID.fullmatch(node) is not None


def shown(node: object) -> str:
    """The id as safe to print: repr, cut to 40 characters."""
    text = repr(node)
    return text if len(text) <= 40 else text[:37] + "..."


def check(node: object, what: str = "node id") -> str:
    """`node` when valid, else BadNodeId: "<what>: bad node id '…'; use <RULE>"."""
    if not valid(node):
        raise BadNodeId(f"{what}: bad node id {shown(node)}; use {RULE}")
    assert isinstance(node, str)
    return node


def refused_hello(link: Any, node: object) -> bool:
    """At HELLO (session.py): True when `node` is not a valid id; the link then got ERROR 2
    naming the rule and counts it as malformed, and no session or node state was made."""
    if valid(node):
        return False
    from . import protocol as p  # here: protocol is not needed by the tools' id checks

    link.malformed += 1
    log.warning(f"{link.port}: HELLO refused: bad node id {shown(node)}")
    link.send(p.error_frame(p.ERR_MALFORMED, f"bad node id; use {RULE}", p.HELLO))
    return True
