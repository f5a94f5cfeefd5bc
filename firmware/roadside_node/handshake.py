# The AUTH handshake, node side (PROTOCOL.md section 5, SECURITY.md): HMAC-SHA256
# challenge-response with fresh nonces both ways, then the session key for auth.py's SEALED
# frames. Imported by auth.Channel for one AUTH message and dropped after it: a session, once
# authenticated, holds only auth.py.
import hashlib

from micropython import const

from . import cbor, proto
from .auth import HANDSHAKE_MS, MAC_LEN, NONCE_LEN, FrameMac, _pads, same

_WAIT_PROOF = const(1)  # auth.py's Channel states (private consts: not importable)
_AUTHED = const(2)

# AUTH steps (key 1 of an AUTH message)
A_CHALLENGE = const(1)  # gateway -> node: 2: gateway nonce
A_RESPONSE = const(2)  # node -> gateway: 2: node nonce, 3: node MAC, 4: node id
A_PROOF = const(3)  # gateway -> node: 2: gateway MAC

# HMAC labels: each MAC says what it is, so one can never stand in for another
L_NODE = b"roadside-auth-node"
L_GATEWAY = b"roadside-auth-gateway"
L_KEY = b"roadside-session-key"


def hmac_sha256(key, msg):
    """HMAC-SHA256 (RFC 2104) from hashlib.sha256: MicroPython has no hmac module."""
    ipad, opad = _pads(key)
    inner = hashlib.sha256(ipad + msg).digest()
    return hashlib.sha256(opad + inner).digest()


def auth_msg(step, fields):
    """AUTH {0: 8, 1: step, key: value...} as CBOR (fields: [(key, bytes or text)])."""
    w = cbor.Writer()
    w.map(2 + len(fields))
    w.int(0)
    w.int(proto.T_AUTH)
    w.int(1)
    w.int(step)
    for k, v in fields:
        w.int(k)
        if isinstance(v, str):
            w.text(v)
        else:
            w.bytes(v)
    return bytes(w.buf)


def _bstr(msg, key, n):
    v = msg.get(key)
    return v if isinstance(v, (bytes, bytearray)) and len(v) == n else None


def step(ch, msg):
    """One AUTH message for the Channel ch: a challenge answered, or a proof checked."""
    k = msg.get(1)
    now = ch.hw.ticks_ms()
    if k == A_CHALLENGE:
        if ch.secret is None:
            ch._error("no secret on this node: provision it with secret.set over serial")
            return
        left = ch._locked()
        if left:
            ch._count("locked_out")
            ch._error("locked out for %d ms after failed authentication" % left)
            return
        if ch.state == _WAIT_PROOF:  # a second challenge: the first one was abandoned
            ch._fail("challenge again before the proof")
            return
        ng = _bstr(msg, 2, NONCE_LEN)
        if ng is None:
            ch._count("malformed")
            ch._error("AUTH challenge: key 2 must be a 16-byte nonce")
            return
        ch.ng = bytes(ng)
        ch.nn = ch.hw.random_bytes(NONCE_LEN)
        ch.state = _WAIT_PROOF
        ch.started = now
        mac = hmac_sha256(ch.secret, L_NODE + ch.ng + ch.nn + ch.node_id.encode())
        ch.reply(auth_msg(A_RESPONSE, [(2, ch.nn), (3, mac), (4, ch.node_id)]))
    elif k == A_PROOF:
        if ch.state != _WAIT_PROOF or ch.hw.ticks_diff(now, ch.started) > HANDSHAKE_MS:
            ch._fail("proof without a fresh challenge")  # a replayed proof
            return
        mac = _bstr(msg, 2, MAC_LEN)
        ng = ch.ng or b""
        nn = ch.nn or b""
        want = hmac_sha256(ch.secret, L_GATEWAY + nn + ng)
        if mac is None or not same(mac, want):
            ch._fail("wrong key")
            return
        ch.mac = FrameMac(hmac_sha256(ch.secret, L_KEY + ng + nn))
        ch.state = _AUTHED
        ch.fails = 0
        ch.locked_until = None
        ch._count("auth_ok")
        ch.log("ble authenticated")
        if ch.on_authed is not None:
            ch.on_authed()
    else:
        ch._count("malformed")
        ch._error("AUTH: unknown step; key 1 must be 1 (challenge) or 3 (proof)")
