"""BLE session security, gateway side (PROTOCOL.md section 5, docs/SECURITY.md).

The node's twin is firmware/roadside_node/auth.py; tests/vectors/ble_auth.json pins both.

    auth = GatewayAuth(secret, "wl-0001")
    link.write(frame(auth.challenge()))          # AUTH step 1: the gateway's nonce
    proof = auth.on_response(msg)                # AUTH step 2 from the node -> step 3
    link.write(frame(proof))
    payload = auth.channel.seal(inner)           # every later frame is SEALED
    inner = auth.channel.open(msg)               # ... both ways (ChannelError if bad)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2

from . import secret_files

AUTH = 8
SEALED = 9
ERR_AUTH = 7

SECRET_LEN = 32
NONCE_LEN = 16
MAC_LEN = 32
TAG_LEN = 8
CTR_MAX = (1 << 64) - 1

A_CHALLENGE = 1
A_RESPONSE = 2
A_PROOF = 3

L_NODE = b"roadside-auth-node"
L_GATEWAY = b"roadside-auth-gateway"
L_KEY = b"roadside-session-key"
DIR_NODE = b"N"
DIR_GATEWAY = b"G"


class AuthError(Exception):
    """The node did not prove the secret (or refused ours); the text says what to check."""


class ChannelError(Exception):
    """A sealed frame was refused; `reason` is replayed, forged or malformed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def fingerprint(secret: bytes) -> str:
    """What may be shown of a secret: 8 hex digits of its SHA-256."""
    return hashlib.sha256(secret).hexdigest()[:8]


def new_secret() -> bytes:
    return os.urandom(SECRET_LEN)


def load_secret(path: str | Path) -> bytes:
    """A secret file: 32 raw bytes or 64 hex digits (whitespace ignored); AuthError if not."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuthError(f"cannot read secret file {str(path)!r}: {exc.strerror}; "
                        f"check secret_file in gateway.toml") from exc
    raw = secret_files.key_bytes(data, SECRET_LEN)
    if raw is None:
        raise AuthError(f"secret file {str(path)!r} must hold 32 bytes or 64 hex digits; "
                        f"copy the key file `roadside config secret PORT` wrote for the node")
    return raw


def frame_tag(key: bytes, direction: bytes, ctr: int, data: bytes) -> bytes:
    return hmac_sha256(key, direction + struct.pack(">Q", ctr) + data)[:TAG_LEN]


def sealed_payload(ctr: int, inner: bytes, tag: bytes) -> bytes:
    return cbor2.dumps({0: SEALED, 1: ctr, 2: inner, 3: tag})


class Channel:
    """One authenticated session's sealing: counters per direction, tag checks, counts."""

    def __init__(self, key: bytes, send_dir: bytes = DIR_GATEWAY,
                 recv_dir: bytes = DIR_NODE) -> None:
        self.key = key
        self.send_dir = send_dir
        self.recv_dir = recv_dir
        self.tx_ctr = 0
        self.rx_ctr = 0
        self.counts = {"replayed": 0, "forged": 0, "malformed": 0}

    def seal(self, inner: bytes) -> bytes:
        self.tx_ctr += 1
        return sealed_payload(self.tx_ctr, inner,
                              frame_tag(self.key, self.send_dir, self.tx_ctr, inner))

    def open(self, msg: dict[int, Any]) -> bytes:
        """The inner payload of a SEALED message; ChannelError (and counted) if refused."""
        ctr, inner, tag = msg.get(1), msg.get(2), msg.get(3)
        # The counter is MACed as 8 bytes: one beyond 2^64 - 1 is malformed, not an error.
        if (type(ctr) is not int or not 0 <= ctr <= CTR_MAX or not isinstance(inner, bytes)
                or not isinstance(tag, bytes) or len(tag) != TAG_LEN):
            self.counts["malformed"] += 1
            raise ChannelError("malformed")
        if not hmac.compare_digest(frame_tag(self.key, self.recv_dir, ctr, inner), tag):
            self.counts["forged"] += 1
            raise ChannelError("forged")
        if ctr <= self.rx_ctr:
            self.counts["replayed"] += 1
            raise ChannelError("replayed")
        self.rx_ctr = ctr
        return inner


class GatewayAuth:
    """The gateway's end of one handshake with one node."""

    def __init__(self, secret: bytes, node_id: str,
                 rng: Callable[[int], bytes] = os.urandom) -> None:
        if len(secret) != SECRET_LEN:
            raise AuthError(f"secret for {node_id} must be 32 bytes, got {len(secret)}")
        self.secret = secret
        self.node_id = node_id
        self.rng = rng
        self.ng: bytes | None = None
        self.channel: Channel | None = None

    def challenge(self) -> bytes:
        """AUTH step 1 with a fresh gateway nonce (any earlier handshake is forgotten)."""
        self.ng = self.rng(NONCE_LEN)
        self.channel = None
        return cbor2.dumps({0: AUTH, 1: A_CHALLENGE, 2: self.ng})

    def on_response(self, msg: dict[int, Any]) -> bytes:
        """Check the node's AUTH step 2; returns step 3 (our proof); AuthError if wrong."""
        if self.ng is None:
            raise AuthError("AUTH response without a challenge")
        if msg.get(0) == 7:
            raise AuthError(f"node refused: {str(msg.get(2))[:100]}")   # shown, kept: short
        if msg.get(0) != AUTH or msg.get(1) != A_RESPONSE:
            raise AuthError(f"expected AUTH response, got type {str(msg.get(0))[:20]}"
                            f" step {str(msg.get(1))[:20]}")
        nn, mac, node = msg.get(2), msg.get(3), msg.get(4)
        if not isinstance(nn, bytes) or len(nn) != NONCE_LEN or not isinstance(mac, bytes):
            raise AuthError("malformed AUTH response")
        if node != self.node_id:
            raise AuthError(f"node says it is {str(node)[:40]!r}, expected {self.node_id!r}; "
                            f"check node / address in gateway.toml")
        want = hmac_sha256(self.secret, L_NODE + self.ng + nn + self.node_id.encode())
        if not hmac.compare_digest(want, mac):
            raise AuthError(f"node {self.node_id} does not know the secret; check "
                            f"secret_file (fingerprint {fingerprint(self.secret)}) against "
                            f"`roadside config --port ... info`")
        key = hmac_sha256(self.secret, L_KEY + self.ng + nn)
        self.channel = Channel(key)
        proof = hmac_sha256(self.secret, L_GATEWAY + nn + self.ng)
        return cbor2.dumps({0: AUTH, 1: A_PROOF, 2: proof})
