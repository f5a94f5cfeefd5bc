"""The checks the gateway makes of an update bundle (`.rsb`, `roadside ota build`) before it
offers one, on top of roadside.gateway.ota_bundle (the bundle format, shared with the build
side): its shape, pieces, size and digest (ota_bundle.parse), the protocol, the boards and
roles as lists of text, and a node's board and role (from its HELLO). The mac is the node's to
check: the gateway does not hold the OTA key.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import ota_bundle as ob
from ..errors import GatewayError

MAX_BUNDLE = 8 * 1024 * 1024     # a MicroPython app image is ~1.6 MB; an app bundle ~100 KB


class BundleError(GatewayError):
    """A bundle the gateway will not offer; the text says what is wrong."""


@dataclass(frozen=True)
class Manifest:
    version: str
    boards: tuple[str, ...]
    roles: tuple[str, ...]
    protocol: int
    size: int


@dataclass(frozen=True)
class Bundle:
    kind: str
    manifest_bytes: bytes
    mac: bytes
    payload: bytes
    manifest: Manifest
    tag: bytes
    raw: bytes          # the file as read (kept in data_dir/ota/ for a resume after restart)

    @property
    def version(self) -> str:
        return self.manifest.version

    def fits(self, board: str | None, role: str | None) -> str | None:
        """None when the bundle fits a node of `board` and `role` (from its HELLO), else the
        refusal reason (`board` or `role`) the node would give."""
        if board is not None and self.manifest.boards and board not in self.manifest.boards:
            return "board"
        if role is not None and self.manifest.roles and role not in self.manifest.roles:
            return "role"
        return None

    def describe(self) -> str:
        return f"{self.kind} {self.version} ({self.manifest.size} bytes, tag {self.tag.hex()})"


def read(data: bytes) -> Bundle:
    """Parse and check a bundle file's bytes; BundleError says what is wrong."""
    if len(data) > MAX_BUNDLE:
        raise BundleError(f"bundle is {len(data)} bytes, more than the {MAX_BUNDLE} a node"
                          f" can stage")
    try:
        b = ob.parse(data)
    except ob.BundleError as exc:
        raise BundleError(str(exc)) from None
    m = b.manifest
    boards, roles, protocol = m.get(ob.M_BOARDS), m.get(ob.M_ROLES), m.get(ob.M_PROTOCOL)
    for name, value in (("boards", boards), ("roles", roles)):
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise BundleError(f"bundle manifest: {name} must be a list of text; build it"
                              f" again with `roadside ota build`")
    if protocol != ob.PROTOCOL:
        raise BundleError(f"bundle is for protocol {protocol!r}; this gateway speaks"
                          f" {ob.PROTOCOL}")
    assert isinstance(boards, list) and isinstance(roles, list)
    manifest = Manifest(b.version, tuple(boards), tuple(roles), protocol, len(b.payload))
    return Bundle(b.kind, b.manifest_bytes, b.mac, b.payload, manifest, b.tag, data)
