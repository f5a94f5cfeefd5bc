# BLE session security, node side (PROTOCOL.md section 5, SECURITY.md): the per-node secret,
# the SEALED wrapper (counter + truncated MAC) every frame carries after the AUTH handshake,
# and the exponential lockout after failures. The handshake itself (HMAC-SHA256
# challenge-response, fresh nonces both ways, the session key) is handshake.py, imported for
# each AUTH message and dropped after; provisioning (secret.set) is provision.py. Pure logic:
# the BLE port (ble.py) moves the bytes.
import hashlib
import struct
import sys

from micropython import const

from . import cbor, proto

SECRET_FILE = "secret.bin"  # in the node's filesystem; never in config.json, logs or replies
SECRET_LEN = const(32)
NONCE_LEN = const(16)
MAC_LEN = const(32)
TAG_LEN = const(8)  # truncated HMAC-SHA256 on every sealed frame
SEAL_OVERHEAD = const(32)  # bytes a SEALED wrapper adds at most (map, counter, bstr heads, tag)
LOCKOUT_BASE_MS = const(1000)  # the first failure locks out for this long, doubling after
LOCKOUT_MAX_MS = const(300000)
MAX_BAD_FRAMES = const(8)  # forged/replayed frames in one session before it is dropped
HANDSHAKE_MS = const(10000)  # a started handshake must end within this

DIR_NODE = b"N"  # sealed frames from the node
DIR_GATEWAY = b"G"

_NONE = const(0)
_WAIT_PROOF = const(1)
_AUTHED = const(2)


def _pads(key):
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    ipad = bytearray(64)
    opad = bytearray(64)
    for i in range(64):
        b = key[i] if i < len(key) else 0
        ipad[i] = b ^ 0x36
        opad[i] = b ^ 0x5C
    return bytes(ipad), bytes(opad)


def _forget(name):
    """A module imported for one step leaves sys.modules (its code is garbage)."""
    sys.modules.pop("roadside_node." + name, None)
    try:
        delattr(sys.modules["roadside_node"], name)
    except (KeyError, AttributeError):
        pass


def same(a, b):
    """Constant-time comparison of two byte strings."""
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0


class FrameMac:
    """The session key's HMAC pads, computed once: tag(dir, ctr, data) per frame."""

    def __init__(self, key):
        self.ipad, self.opad = _pads(key)

    def tag(self, direction, ctr, data):
        h = hashlib.sha256(self.ipad)
        h.update(direction)
        h.update(struct.pack(">Q", ctr))
        h.update(data)
        return hashlib.sha256(self.opad + h.digest()).digest()[:TAG_LEN]


def load_secret(path=SECRET_FILE):
    """The provisioned secret, or None when the node has none (BLE refuses to authenticate)."""
    try:
        with open(path, "rb") as f:
            s = f.read()
    except OSError:
        return None
    return s if len(s) == SECRET_LEN else None


def sealed(ctr, inner, tag):
    """The SEALED message {0: 9, 1: ctr, 2: inner, 3: tag} as CBOR."""
    w = cbor.Writer()
    w.map(4)
    w.int(0)
    w.int(proto.T_SEALED)
    w.int(1)
    w.int(ctr)
    w.int(2)
    w.bytes(inner)
    w.int(3)
    w.bytes(tag)
    return bytes(w.buf)


class Channel:
    """The node's end of one BLE connection's security. handle() takes every payload that
    arrives and returns the inner payload of a good SEALED frame (else None); seal() wraps an
    outgoing payload. reply(payload) sends an unsealed payload (handshake, auth errors)."""

    def __init__(self, node_id, hw, reply, secret=None, log=print):
        self.node_id = node_id
        self.hw = hw
        self.reply = reply
        self.secret = secret if secret is not None else load_secret()
        self.log = log
        self.on_authed = None  # called when the gateway proved the secret
        self.on_fail = None  # called to drop the connection after a failure
        self.fails = 0  # consecutive failures: the lockout doubles with each
        self.locked_until = None  # ticks_ms
        self.stats = {"auth_ok": 0, "auth_failed": 0, "locked_out": 0, "unauthenticated": 0,
                      "replayed": 0, "forged": 0, "malformed": 0, "abandoned": 0}
        self.reset()

    def reset(self):
        """A new connection: nothing of the last session's state is reused."""
        self.state = _NONE
        self.ng = None
        self.nn = None
        self.mac = None
        self.tx_ctr = 0
        self.rx_ctr = 0
        self.bad = 0
        self.started = 0

    @property
    def authed(self):
        return self.state == _AUTHED

    def _count(self, key):
        self.stats[key] += 1

    def _error(self, text):
        self.reply(proto.error(proto.E_AUTH, text, proto.T_AUTH))

    def _fail(self, why):
        ms = self._lock()
        self._count("auth_failed")
        self.log("ble auth failed (%s): locked out %d ms" % (why, ms))
        self._error("auth failed: locked out for %d ms" % ms)
        self.reset()
        if self.on_fail is not None:
            self.on_fail()

    def _lock(self):
        """One more failure: the lockout doubles (LOCKOUT_BASE_MS, ... LOCKOUT_MAX_MS)."""
        self.fails += 1
        ms = LOCKOUT_BASE_MS << min(self.fails - 1, 16)
        ms = min(ms, LOCKOUT_MAX_MS)
        self.locked_until = self.hw.ticks_ms() + ms
        return ms

    def abandon(self, why):
        """A connection ends (or is ended) without a completed handshake. A started
        handshake counts as a failure toward the lockout, so challenges that are never
        answered cost the central as much as wrong proofs."""
        if self.state == _WAIT_PROOF:
            self._count("abandoned")
            ms = self._lock()
            self.log("ble handshake abandoned (%s): locked out %d ms" % (why, ms))
        self.reset()

    def expired(self, connected_at):
        """True when this connection has had HANDSHAKE_MS since connect and is still not
        authenticated: the central is to be dropped (it holds the node's only BLE slot)."""
        if self.state == _AUTHED:
            return False
        return self.hw.ticks_diff(self.hw.ticks_ms(), connected_at) > HANDSHAKE_MS

    def _locked(self):
        if self.locked_until is None:
            return 0
        left = self.hw.ticks_diff(self.locked_until, self.hw.ticks_ms())
        return left if left > 0 else 0

    def handle(self, payload):
        try:
            msg = cbor.loads(payload)
        except cbor.CBORError:
            self._count("malformed")
            return None
        if not isinstance(msg, dict):
            self._count("malformed")
            return None
        mtype = msg.get(0)
        if self.state == _AUTHED:
            if mtype == proto.T_SEALED:
                return self._open(msg)
            self._count("unauthenticated")  # unsealed in a sealed session: dropped
            return None
        if mtype == proto.T_AUTH:
            # the handshake's code is held for its step only: an authenticated session needs
            # seal/open, and a BLE node's heap is short (docs/PERFORMANCE.md "OTA over BLE")
            from . import handshake
            try:
                handshake.step(self, msg)
            finally:
                _forget("handshake")
        else:
            self._count("unauthenticated")
            self._error("authenticate first: AUTH (type 8) challenge")
        return None

    def _open(self, msg):
        ctr = msg.get(1)
        inner = msg.get(2)
        tag = msg.get(3)
        if type(ctr) is not int or not isinstance(inner, (bytes, bytearray)) or \
                not isinstance(tag, (bytes, bytearray)) or len(tag) != TAG_LEN:
            self._count("malformed")  # a truncated tag among them
            return self._bad("malformed sealed frame")
        if not same(self.mac.tag(DIR_GATEWAY, ctr, inner), tag):  # type: ignore[union-attr]
            self._count("forged")
            return self._bad("forged frame")
        if ctr <= self.rx_ctr:
            self._count("replayed")
            return self._bad("replayed frame")
        self.rx_ctr = ctr
        return inner if type(inner) is bytes else bytes(inner)  # no copy of ~1 KB

    def _bad(self, why):
        self.bad += 1
        if self.bad >= MAX_BAD_FRAMES:
            self._fail("%d bad frames, last: %s" % (self.bad, why))
        return None

    def seal(self, inner):
        """SEALED payload for `inner` (a message payload) with the next counter."""
        self.tx_ctr += 1
        tag = self.mac.tag(DIR_NODE, self.tx_ctr, inner)  # type: ignore[union-attr]
        return sealed(self.tx_ctr, inner, tag)
