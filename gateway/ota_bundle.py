"""OTA bundles (docs/PROTOCOL.md 2.6): the `.rsb` file `roadside ota build` writes and the
gateway sends, encoded, read and verified here (pure: cbor2, hashlib, hmac; no I/O besides
`load`), so the gateway needs nothing from roadside.tools.

A bundle is the CBOR map {1: kind, 2: manifest (CBOR bytes), 3: mac, 4: payload}; the mac is
HMAC-SHA256(ota_key, manifest bytes) and the manifest carries a SHA-256 per piece and for the
whole payload, so a verified mac covers every payload byte. The tag (the first 8 bytes of
sha256(manifest bytes)) names the bundle in every OTA message.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from . import secret_files

KINDS = ("app", "firmware")
PROTOCOL = 1
KEY_LEN = 32
TAG_LEN = 8
PIECE = {"app": 8 * 1024, "firmware": 128 * 1024}  # the payload's blocks (the last shorter)
CHUNK = 512  # OTA_CHUNK data at most
# the OFFER carries the whole manifest in one frame: 1024 bytes at most, 992 sealed (BLE)
OFFER_MAX = 992

# manifest keys
M_VERSION, M_BOARDS, M_ROLES, M_PROTOCOL, M_PIECES, M_FILES, M_SIZE, M_DIGEST, M_CREATED, \
    M_MIN_FREE = range(1, 11)


class BundleError(ValueError):
    """A bundle that cannot be used; the text says what is wrong and what to do."""


@dataclass
class Bundle:
    kind: str
    manifest_bytes: bytes
    mac: bytes
    payload: bytes
    manifest: dict[int, Any]

    @property
    def tag(self) -> bytes:
        return tag_of(self.manifest_bytes)

    @property
    def version(self) -> str:
        return str(self.manifest[M_VERSION])

    @property
    def pieces(self) -> list[tuple[int, bytes]]:
        return [(int(s), bytes(d)) for s, d in self.manifest[M_PIECES]]

    def files(self) -> dict[str, bytes]:
        """An app bundle's files (path in the app slot -> bytes), from its payload archive."""
        return unpack(self.payload)

    def encode(self) -> bytes:
        return cbor2.dumps({1: self.kind, 2: self.manifest_bytes, 3: self.mac, 4: self.payload})

    def offer(self, force: bool = False) -> dict[int, Any]:
        """The OTA_OFFER message for this bundle."""
        msg: dict[int, Any] = {0: 10, 1: self.kind, 2: self.manifest_bytes, 3: self.mac}
        if force:
            msg[4] = True
        return msg

    def chunk(self, offset: int, size: int = CHUNK) -> dict[int, Any]:
        """The OTA_CHUNK message carrying payload[offset:offset + size]."""
        return {0: 11, 1: self.tag, 2: offset, 3: self.payload[offset:offset + size]}


def tag_of(manifest_bytes: bytes) -> bytes:
    return hashlib.sha256(manifest_bytes).digest()[:TAG_LEN]


def mac_of(key: bytes, manifest_bytes: bytes) -> bytes:
    return hmac.new(key, manifest_bytes, hashlib.sha256).digest()


def version_tuple(text: str) -> tuple[int, ...]:
    """"1.4.0" -> (1, 4, 0); BundleError for anything but dotted decimal integers."""
    try:
        parts = tuple(int(p) for p in text.split("."))
    except ValueError:
        parts = ()
    if not parts or any(p < 0 for p in parts):
        raise BundleError(f"version {text!r} is not dotted numbers like 1.4.0")
    return parts


def archive(files: dict[str, bytes]) -> bytes:
    """An app payload: per file (in path order) 1 byte name length, the name (UTF-8), 4 bytes
    size (little-endian), the bytes. The node unpacks it into its app slot at the switch."""
    out = bytearray()
    for name in sorted(files):
        raw = name.encode()
        if not 0 < len(raw) < 256 or name.startswith("/") or ".." in name.split("/"):
            raise BundleError(f"file name {name!r}: a relative path of 1 to 255 bytes")
        out += bytes([len(raw)]) + raw + len(files[name]).to_bytes(4, "little") + files[name]
    return bytes(out)


def unpack(payload: bytes) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    at = 0
    while at < len(payload):
        n = payload[at]
        name = payload[at + 1:at + 1 + n].decode()
        size = int.from_bytes(payload[at + 1 + n:at + 5 + n], "little")
        at += 5 + n
        if n == 0 or at + size > len(payload):
            raise BundleError("the app archive is cut short; build the bundle again")
        files[name] = payload[at:at + size]
        at += size
    return files


def make(kind: str, version: str, payload: bytes, *, key: bytes, boards: list[str],
         roles: list[str], created: str, files: int | None = None,
         min_free: int | None = None) -> Bundle:
    """A bundle of `payload` (app: an `archive` of `files` files; firmware: the image) cut in
    PIECE[kind] blocks, authenticated with `key`."""
    if kind not in KINDS:
        raise BundleError(f"kind {kind!r}: allowed {', '.join(KINDS)}")
    version_tuple(version)
    if len(key) != KEY_LEN:
        raise BundleError(f"the ota key must be {KEY_LEN} bytes")
    if not payload:
        raise BundleError("nothing to bundle: the payload is empty")
    step = PIECE[kind]
    pieces = [payload[i:i + step] for i in range(0, len(payload), step)]
    manifest: dict[int, Any] = {
        M_VERSION: version, M_BOARDS: list(boards), M_ROLES: list(roles),
        M_PROTOCOL: PROTOCOL,
        M_PIECES: [[len(p), hashlib.sha256(p).digest()] for p in pieces],
        M_SIZE: len(payload), M_DIGEST: hashlib.sha256(payload).digest(),
        M_CREATED: created,
        # app: the staged payload + the unpacked slot + a block per file and directory
        M_MIN_FREE: min_free if min_free is not None else
        (2 * len(payload) + 4096 * ((files or 0) + 8) if kind == "app" else 0),
    }
    if kind == "app":
        manifest[M_FILES] = files or 0
    manifest_bytes = cbor2.dumps(manifest)
    b = Bundle(kind, manifest_bytes, mac_of(key, manifest_bytes), payload, manifest)
    if len(cbor2.dumps(b.offer(True))) > OFFER_MAX:
        raise BundleError(f"the manifest is too big for one OTA_OFFER frame ("
                          f"{len(manifest_bytes)} bytes; {len(pieces)} pieces, "
                          f"{len(boards)} boards): name fewer boards with --board")
    return b


def parse(data: bytes, where: str = "bundle") -> Bundle:
    """A bundle's bytes -> Bundle, checked for shape and inner consistency (pieces, size,
    digest); the mac is checked by `verify` (it needs the key)."""
    try:
        top = cbor2.loads(data)
    except Exception as exc:  # noqa: BLE001 - cbor2 raises several types for bad input
        raise BundleError(f"{where} is not a roadside OTA bundle (not CBOR: {exc}); "
                          f"make one with `roadside ota build`") from None
    if not isinstance(top, dict) or set(top) != {1, 2, 3, 4}:
        raise BundleError(f"{where} is not a roadside OTA bundle (expected the map "
                          f"{{1: kind, 2: manifest, 3: mac, 4: payload}}); make one with "
                          f"`roadside ota build`")
    kind, mbytes, mac, payload = top[1], top[2], top[3], top[4]
    if kind not in KINDS or not isinstance(mbytes, bytes) or not isinstance(payload, bytes) \
            or not isinstance(mac, bytes) or len(mac) != 32:
        raise BundleError(f"{where}: bad kind, manifest, mac or payload field; build it again")
    try:
        manifest = cbor2.loads(mbytes)
    except Exception:  # noqa: BLE001
        raise BundleError(f"{where}: its manifest is not CBOR; build it again") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: its manifest is not a map; build it again")
    b = Bundle(kind, mbytes, mac, payload, manifest)
    problem = _inconsistent(b)
    if problem:
        raise BundleError(f"{where} is damaged: {problem}; build or copy it again")
    return b


def _inconsistent(b: Bundle) -> str | None:
    m = b.manifest
    if not isinstance(m.get(M_VERSION), str):
        return "no version"
    try:
        version_tuple(m[M_VERSION])
    except BundleError as exc:
        return str(exc)
    pieces = m.get(M_PIECES)
    if not isinstance(pieces, list) or not pieces:
        return "no pieces"
    at = 0
    for i, p in enumerate(pieces):
        if not (isinstance(p, list) and len(p) == 2 and isinstance(p[0], int)
                and isinstance(p[1], bytes) and len(p[1]) == 32):
            return f"piece {i} is not [size, sha256]"
        if hashlib.sha256(b.payload[at:at + p[0]]).digest() != p[1]:
            return f"piece {i} does not match its sha256"
        at += p[0]
    if at != len(b.payload) or m.get(M_SIZE) != len(b.payload):
        return f"payload is {len(b.payload)} bytes, the manifest says {m.get(M_SIZE)}"
    if m.get(M_DIGEST) != hashlib.sha256(b.payload).digest():
        return "payload does not match its sha256"
    if b.kind == "app":
        try:
            files = unpack(b.payload)
        except (BundleError, UnicodeDecodeError):
            return "its app archive is cut short"
        if len(files) != m.get(M_FILES):
            return f"its archive holds {len(files)} files, the manifest says {m.get(M_FILES)}"
    return None


def verify(b: Bundle, key: bytes) -> None:
    """BundleError unless the bundle's mac is HMAC-SHA256(key, manifest)."""
    if not hmac.compare_digest(mac_of(key, b.manifest_bytes), b.mac):
        raise BundleError("the bundle's mac does not match this ota key: it was built with "
                          "another key or altered; build it with the key the nodes hold")


def load(path: Path) -> Bundle:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path}: {exc.strerror}") from None
    return parse(data, str(path))


def load_key(path: Path) -> bytes:
    """An ota key file: 32 raw bytes or 64 hex digits."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"no ota key file {path}: make one with `roadside ota key` (and "
                          f"give it to the nodes with `roadside config ota-key`), or pass "
                          f"--key-file FILE") from None
    except OSError as exc:
        raise BundleError(f"cannot read ota key file {path}: {exc.strerror}") from None
    raw = secret_files.key_bytes(data, KEY_LEN)
    if raw is None:
        raise BundleError(f"ota key file {path} must hold 32 bytes or 64 hex digits; make "
                          f"one with `roadside ota key`")
    return raw
