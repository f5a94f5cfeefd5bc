"""Reading an update bundle (`.rsb`, written by `roadside ota build`) and the checks the gateway
can make before it offers one: its kind, its manifest, its payload against the manifest, and a
node's board and role (from its HELLO). The mac is the node's to check: the gateway does not
hold the OTA key.

Bundle: CBOR map {1: kind, 2: manifest (bytes, CBOR), 3: mac (32 bytes), 4: payload (bytes)}.
Tag: the first 8 bytes of sha256(manifest bytes); every OTA message names the bundle by it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import cbor2

from ..errors import GatewayError

KINDS = ("app", "firmware")
PROTOCOL = 1
MAX_BUNDLE = 8 * 1024 * 1024     # a MicroPython firmware image is ~1.6 MB; an app ~100 KB


class BundleError(GatewayError):
    """A bundle the gateway will not offer; the text says what is wrong."""


@dataclass(frozen=True)
class Manifest:
    version: str
    boards: tuple[str, ...]
    roles: tuple[str, ...]
    protocol: int
    pieces: tuple[tuple[int, bytes], ...]
    files: tuple[str, ...]
    size: int
    digest: bytes
    created: str
    min_free: int


@dataclass(frozen=True)
class Bundle:
    kind: str
    manifest_bytes: bytes
    mac: bytes
    payload: bytes
    manifest: Manifest
    raw: bytes          # the file as read (kept in data_dir/ota/ for a resume after restart)

    @property
    def tag(self) -> bytes:
        return hashlib.sha256(self.manifest_bytes).digest()[:8]

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


def version_key(text: str) -> tuple[int, ...]:
    """A dotted version as ints for comparison ("1.10.0" > "1.9.2"); BundleError if not."""
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        raise BundleError(f"manifest version {text[:40]!r} is not dotted numbers like"
                          f" 1.4.0") from None


def _get(m: dict[Any, Any], key: int, typ: type | tuple[type, ...], what: str,
         default: Any = None, required: bool = True) -> Any:
    if key not in m:
        if required:
            raise BundleError(f"manifest: {what} (key {key}) missing; rebuild the bundle with"
                              f" `roadside ota build`")
        return default
    v = m[key]
    if not isinstance(v, typ) or isinstance(v, bool) and typ is int:
        raise BundleError(f"manifest: {what} (key {key}) has the wrong type"
                          f" {type(v).__name__}")
    return v


def parse_manifest(data: bytes) -> Manifest:
    try:
        m = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on garbage
        raise BundleError(f"manifest is not CBOR: {exc}") from None
    if not isinstance(m, dict):
        raise BundleError("manifest must be a CBOR map")
    version = _get(m, 1, str, "version")
    version_key(version)
    boards = _get(m, 2, list, "boards")
    roles = _get(m, 3, list, "roles")
    if not all(isinstance(x, str) for x in boards + roles):
        raise BundleError("manifest: boards and roles must be lists of text")
    pieces_raw = _get(m, 5, list, "pieces")
    pieces = []
    for i, piece in enumerate(pieces_raw):
        if (not isinstance(piece, list) or len(piece) != 2 or type(piece[0]) is not int
                or piece[0] < 0 or not isinstance(piece[1], bytes) or len(piece[1]) != 32):
            raise BundleError(f"manifest: piece {i} must be [size, sha256 (32 bytes)]")
        pieces.append((piece[0], piece[1]))
    files = _get(m, 6, list, "files", [], required=False)
    if not all(isinstance(x, str) for x in files):
        raise BundleError("manifest: files must be a list of text")
    digest = _get(m, 8, bytes, "digest")
    if len(digest) != 32:
        raise BundleError("manifest: digest must be 32 bytes (sha256)")
    return Manifest(version=version, boards=tuple(boards), roles=tuple(roles),
                    protocol=_get(m, 4, int, "protocol"), pieces=tuple(pieces),
                    files=tuple(files), size=_get(m, 7, int, "size"), digest=digest,
                    created=_get(m, 9, str, "created", "", required=False),
                    min_free=_get(m, 10, int, "min_free", 0, required=False))


def read(data: bytes) -> Bundle:
    """Parse and check a bundle file's bytes; BundleError says what is wrong."""
    if len(data) > MAX_BUNDLE:
        raise BundleError(f"bundle is {len(data)} bytes, more than the {MAX_BUNDLE} a node"
                          f" can stage")
    try:
        top = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on garbage
        raise BundleError(f"not a bundle (not CBOR: {exc}); give the .rsb file that"
                          f" `roadside ota build` wrote") from None
    if not isinstance(top, dict) or not {1, 2, 3, 4} <= set(top):
        raise BundleError("not a bundle: need a CBOR map with keys 1 kind, 2 manifest, 3 mac,"
                          " 4 payload; give the .rsb file that `roadside ota build` wrote")
    kind, manifest_bytes, mac, payload = top[1], top[2], top[3], top[4]
    if kind not in KINDS:
        raise BundleError(f"bundle kind {str(kind)[:20]!r} is not one of {', '.join(KINDS)}")
    if not isinstance(manifest_bytes, bytes) or not isinstance(payload, bytes):
        raise BundleError("bundle: manifest and payload must be bytes")
    if not isinstance(mac, bytes) or len(mac) != 32:
        raise BundleError("bundle: mac must be 32 bytes (HMAC-SHA256); was it built with"
                          " `roadside ota build --key-file`?")
    manifest = parse_manifest(manifest_bytes)
    if manifest.protocol != PROTOCOL:
        raise BundleError(f"bundle is for protocol {manifest.protocol}; this gateway speaks"
                          f" {PROTOCOL}")
    if kind == "app" and len(manifest.files) != len(manifest.pieces):
        raise BundleError(f"app bundle: {len(manifest.files)} files for"
                          f" {len(manifest.pieces)} pieces")
    if sum(size for size, _ in manifest.pieces) != manifest.size or len(payload) != manifest.size:
        raise BundleError(f"bundle payload is {len(payload)} bytes; the manifest says"
                          f" {manifest.size} (pieces sum to"
                          f" {sum(size for size, _ in manifest.pieces)}): damaged, rebuild it")
    if hashlib.sha256(payload).digest() != manifest.digest:
        raise BundleError("bundle payload does not match the manifest's sha256: damaged or"
                          " tampered, rebuild it")
    offset = 0
    for i, (size, digest) in enumerate(manifest.pieces):
        if hashlib.sha256(payload[offset:offset + size]).digest() != digest:
            raise BundleError(f"bundle piece {i} does not match its sha256: damaged or"
                              f" tampered, rebuild it")
        offset += size
    return Bundle(kind, manifest_bytes, mac, payload, manifest, data)
