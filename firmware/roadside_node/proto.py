# Protocol v1 numbers (docs/PROTOCOL.md), message builders and the parser of what a node gets.
from micropython import const

from . import cbor

PROTOCOL_VERSION = const(1)
# the send window, the ACK timeout, ERROR 3 and 6 and the unsynced-clock flag: private consts
# in session.py, their one user (a name here is a qstr every node interns)

# message types (key 0)
_T_HELLO = const(1)
T_RECORDS = const(2)
T_ACK = const(3)
T_COMMAND = const(4)
_T_REPLY = const(5)
T_TIME = const(6)
T_ERROR = const(7)
T_AUTH = const(8)  # BLE handshake (auth.py, PROTOCOL.md section 5)
T_SEALED = const(9)  # BLE: counter + truncated MAC around a message
# 10 OTA_OFFER, 11 OTA_CHUNK, 12 OTA_STATE: over-the-air updates, ota.py's own constants
# (PROTOCOL.md 2.6): no names here, every node holds this module from boot

# error codes
_E_UNKNOWN_TYPE = const(1)
E_MALFORMED = const(2)
_E_UNKNOWN_COMMAND = const(4)
_E_BAD_ARGS = const(5)
E_AUTH = const(7)  # BLE: authenticate first / auth failed / locked out

# record flags; the record kinds and body keys (PROTOCOL.md 2.1) are private consts where
# they are used: health in app.py, each role's in roles/<role>.py (every name here is a qstr
# every node interns for good: docs/PERFORMANCE.md "OTA: heap and qstrs per role")
F_PRIORITY = const(2)


def reply_fits(req, payload, limit):
    """The REPLY payload as is when it fits `limit` bytes; else a short ok=false REPLY to
    the same request saying how big the answer was (a frame that big cannot be sent)."""
    if len(payload) <= limit:
        return payload
    return reply(req, False, None, "reply too big (%d bytes, at most %d); ask for less, "
                 "e.g. config.get with a key" % (len(payload), limit))


class CommandError(ValueError):
    """A command refused or with bad args: the REPLY carries ok=false and this text."""


class ProtoError(ValueError):
    """A payload that is not a valid message: code is the ERROR code to answer with."""

    def __init__(self, code, text, ref=None):
        super().__init__(text)
        self.code = code
        self.text = text
        self.ref = ref


def record(seq, t, kind, flags, body):
    """One record [seq, t, kind, flags, body] as CBOR: it is journaled and sent as is."""
    w = cbor.Writer()
    w.array(5)
    w.int(seq)
    w.int(t)
    w.int(kind)
    w.int(flags)
    w.value(body)
    return bytes(w.buf)


def hello(node_id, role, fw, board, boot_count, reset_cause, next_seq, first_unacked,
          free_heap=None, safe_mode=False, unsure=0):
    """HELLO; the optional keys 10 (free heap), 11 (safe mode, only when true) and 12 (the
    seq from which the node's counter is unsure, only when it is) are added when given, so a
    HELLO without them is byte-identical to the v1 vectors."""
    w = cbor.Writer()
    w.map(10 + (free_heap is not None) + bool(safe_mode) + bool(unsure))
    w.int(0)
    w.int(_T_HELLO)
    w.int(1)
    w.text(node_id)
    w.int(2)
    w.text(role)
    w.int(3)
    w.text(fw)
    w.int(4)
    w.text(board)
    w.int(5)
    w.int(boot_count)
    w.int(6)
    w.text(reset_cause)
    w.int(7)
    w.int(next_seq)
    w.int(8)
    w.int(PROTOCOL_VERSION)
    w.int(9)
    w.int(first_unacked)
    if free_heap is not None:
        w.int(10)
        w.int(free_heap)
    if safe_mode:
        w.int(11)
        w.bool(True)
    if unsure:
        w.int(12)
        w.int(unsure)
    return bytes(w.buf)


# bytes a RECORDS message needs besides its records: map head, 0:2, 1:from (<= 9), 2:array(<= 3)
RECORDS_OVERHEAD = const(16)


def records(from_seq, recs):
    """RECORDS with already encoded records (the caller keeps the total under MAX_PAYLOAD)."""
    w = cbor.Writer()
    w.map(3)
    w.int(0)
    w.int(T_RECORDS)
    w.int(1)
    w.int(from_seq)
    w.int(2)
    w.array(len(recs))
    for r in recs:
        w.raw(r)
    return bytes(w.buf)


def _uint_len(n):
    """Bytes of a CBOR head for n (shortest form)."""
    return 1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5 if n < 0x100000000 \
        else 9


def _head_at(buf, i, major, n):
    """A CBOR head written at buf[i]; returns the index after it."""
    m = major << 5
    if n < 24:
        buf[i] = m | n
        return i + 1
    size = _uint_len(n)
    buf[i] = m | (23 + {2: 1, 3: 2, 5: 3, 9: 4}[size])
    for k in range(size - 1, 0, -1):  # big-endian
        buf[i + k] = n & 0xFF
        n >>= 8
    return i + size


def records_head(buf, at, from_seq, count):
    """The head of a RECORDS message written in place just before its `count` records, which
    the caller already put at buf[at:]: no list of records, no message copy (session.pump).
    Returns where the message starts; byte-identical to records()."""
    start = at - 5 - _uint_len(from_seq) - _uint_len(count)
    if start < 0:
        raise ValueError("no room for the RECORDS head")
    buf[start] = 0xA3  # map(3)
    buf[start + 1] = 0  # 0: T_RECORDS
    buf[start + 2] = T_RECORDS
    buf[start + 3] = 1  # 1: from
    i = _head_at(buf, start + 4, 0, from_seq)
    buf[i] = 2  # 2: array of records
    _head_at(buf, i + 1, 4, count)
    return start


def reply(req_id, ok, result=None, error=None):
    w = cbor.Writer()
    w.map(4)
    w.int(0)
    w.int(_T_REPLY)
    w.int(1)
    w.int(req_id)
    w.int(2)
    w.bool(ok)
    if ok:
        w.int(3)
        w.value(result)
    else:
        w.int(4)
        w.text(error or "")
    return bytes(w.buf)


_ERROR_TEXT = const(512)  # an ERROR's text at most: a safety net, so its frame always fits


def error(code, text, ref=None):
    if len(text) > _ERROR_TEXT:
        text = text[:_ERROR_TEXT - 3] + "..."
    w = cbor.Writer()
    w.map(4 if ref is not None else 3)
    w.int(0)
    w.int(T_ERROR)
    w.int(1)
    w.int(code)
    w.int(2)
    w.text(text)
    if ref is not None:
        w.int(3)
        w.int(ref)
    return bytes(w.buf)


def _uint(v):
    return type(v) is int and v >= 0


def _need(msg, key, check, what, mtype):
    v = msg.get(key)
    if not check(v):
        raise ProtoError(E_MALFORMED, "key %d must be %s" % (key, what), mtype)
    return v


def parse(payload):
    """A payload from the gateway -> (type, map). ProtoError says how to answer a bad one."""
    try:
        msg = cbor.loads(payload)
    except cbor.CBORError as e:
        raise ProtoError(E_MALFORMED, "not cbor: " + str(e))
    if not isinstance(msg, dict):
        raise ProtoError(E_MALFORMED, "message is not a map")
    mtype = msg.get(0)
    if not _uint(mtype):
        raise ProtoError(E_MALFORMED, "key 0 must be a uint type")
    if mtype == T_ACK or mtype == T_TIME:
        _need(msg, 1, _uint, "a uint", mtype)
        if mtype == T_ACK and 2 in msg:
            _need(msg, 2, lambda v: _uint(v) and v >= 1, "a uint resume seq", mtype)
    elif mtype == T_COMMAND:
        _need(msg, 1, _uint, "a uint request id", mtype)
        _need(msg, 2, lambda v: isinstance(v, str), "a text name", mtype)
        args = msg.get(3)
        if args is not None and not isinstance(args, dict):
            raise ProtoError(E_MALFORMED, "key 3 must be a map of args", mtype)
    elif mtype == T_ERROR:
        _need(msg, 1, _uint, "a uint code", mtype)
        if 2 in msg and not isinstance(msg[2], str):
            raise ProtoError(E_MALFORMED, "key 2 must be text", mtype)
    elif mtype == 10 or mtype == 11:  # OTA_OFFER, OTA_CHUNK
        pass  # checked by ota.py (imported on demand): no boot-time code for them here
    else:
        raise ProtoError(_E_UNKNOWN_TYPE, "unknown message type " + str(mtype), mtype)
    return mtype, msg
