"""Protocol v1 of docs/PROTOCOL.md: constants, COBS+CRC-32 framing, CBOR messages.

The numbers here are normative (tests/vectors/ pins them byte for byte). Encoding rule shared
with the firmware: maps are emitted with their keys in ascending order, integers in shortest
form and floats as float64, i.e. plain `cbor2.dumps` of dicts built in ascending key order.
"""

from __future__ import annotations

import binascii
import io
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cbor2
from cobs import cobs

from . import roles as _roles
from .errors import ProtocolError

# -- section 1: framing --------------------------------------------------------------------

MAX_PAYLOAD = 1024
MAX_ENCODED = 1040
CRC_LEN = 4
DELIMITER = b"\x00"

# -- section 2: message types, keys, error codes --------------------------------------------

HELLO = 1
RECORDS = 2
ACK = 3
COMMAND = 4
REPLY = 5
TIME = 6
ERROR = 7
OTA_OFFER = 10     # updates over the air (PROTOCOL.md 2.6): gateway -> node
OTA_CHUNK = 11     # gateway -> node
OTA_STATE = 12     # node -> gateway
TYPE_NAMES = {HELLO: "HELLO", RECORDS: "RECORDS", ACK: "ACK", COMMAND: "COMMAND",
              REPLY: "REPLY", TIME: "TIME", ERROR: "ERROR", OTA_OFFER: "OTA_OFFER",
              OTA_CHUNK: "OTA_CHUNK", OTA_STATE: "OTA_STATE"}
OTA_STATES = ("idle", "receiving", "staged", "refused", "trial", "done", "rolled_back")

K_TYPE = 0
# HELLO
K_HELLO_NODE = 1
K_HELLO_ROLE = 2
K_HELLO_FW = 3
K_HELLO_BOARD = 4
K_HELLO_BOOT_COUNT = 5
K_HELLO_RESET_CAUSE = 6
K_HELLO_NEXT_SEQ = 7
K_HELLO_PROTO = 8
K_HELLO_FIRST_UNACKED = 9
K_HELLO_FREE_HEAP = 10
K_HELLO_SAFE_MODE = 11
K_HELLO_UNSURE = 12     # the node lost its saved counter: its seqs from here on may collide
# RECORDS
K_RECORDS_FROM = 1
K_RECORDS_LIST = 2
# ACK / TIME
K_ACK_SEQ = 1
K_ACK_RESUME = 2        # the node numbers its records from here on (PROTOCOL.md 2.2 rule 7)
K_TIME_MS = 1
# COMMAND / REPLY
K_CMD_ID = 1
K_CMD_NAME = 2
K_CMD_ARGS = 3
K_REPLY_ID = 1
K_REPLY_OK = 2
K_REPLY_RESULT = 3
K_REPLY_ERROR = 4
# ERROR
K_ERROR_CODE = 1
K_ERROR_MESSAGE = 2
K_ERROR_REF_TYPE = 3

ERR_UNKNOWN_TYPE = 1
ERR_MALFORMED = 2
ERR_NO_SESSION = 3
ERR_UNKNOWN_COMMAND = 4
ERR_BAD_ARGS = 5
ERR_BUSY = 6

PROTOCOL_VERSION = 1
ROLES = _roles.NAMES   # gateway/roles.py: the one table of roles
WINDOW = 32
ACK_TIMEOUT_S = 2.0
TIME_RESEND_S = 600.0
# Every uint of a message fits SQLite's INTEGER (int64): larger ones are refused at decoding
# (a seq of 2**63 would otherwise fail the whole group commit of every link).
MAX_UINT = (1 << 63) - 1
# No node journal holds more records than this (journal_max_bytes <= 1 MiB plus the 25 %
# priority reserve, >= 12 bytes an entry): a HELLO or RECORDS whose `from` / first unacked /
# next seq lies further beyond what the gateway already stored of the node is refused.
MAX_SEQ_JUMP = 1 << 17
# A REPLY result or COMMAND args: at most this deep and this many items (a 1 KiB payload
# holds fewer; more means shared references, tags 28/29, possibly a cycle).
MAX_DEPTH = 16
MAX_ITEMS = MAX_PAYLOAD

# -- section 2.1: records ------------------------------------------------------------------

FLAG_CLOCK_UNSYNCED = 1
FLAG_PRIORITY = 2

KIND_LEVEL = 1
KIND_ALARM = 2
KIND_HEALTH = 3
KIND_PHASE = 10  # signal monitor
KIND_FAULT = 11
KIND_COUNTS = 12
KIND_PLAN = 13
KIND_TRANSACTION = 20  # toll beacon
KIND_READER = 21
KIND_RAINFALL = 30  # rain gauge
KIND_INTENSITY = 31
# names and body fields of every kind: the role table's (gateway/roles.py)
KIND_NAMES = {k.number: k.name for k in _roles.KINDS.values()}
BODY_NAMES: dict[int, dict[int, str]] = {k.number: k.body for k in _roles.KINDS.values()}
ALARM_STATES = ("normal", "alert", "alarm", "critical")


def kind_name(kind: int) -> str:
    """The uplink text name of a record kind; unknown (reserved) kinds as `kind-N`."""
    return KIND_NAMES.get(kind, f"kind-{kind}")


def data_names(kind: int, body: dict[int, Any]) -> tuple[tuple[int, str], ...]:
    """(key, uplink name) of a record body's keys in ascending key order (section 2.1; an
    unknown key is named by its number): the one naming rule of the uplink `data` map."""
    names = BODY_NAMES.get(kind, {})
    return tuple((k, names.get(k, str(k))) for k in sorted(body))


def body_to_data(kind: int, body: dict[int, Any]) -> dict[str, Any]:
    """A record body (uint keys) as the uplink `data` map (names of section 2.1)."""
    return {name: body[k] for k, name in data_names(kind, body)}


# -- framing ---------------------------------------------------------------------------------


def encode_frame(message: dict[int, Any] | Message | bytes) -> bytes:
    """One frame on the wire: COBS(payload || crc32 LE) || 0x00.

    `message` is a message map, a message object, or an already encoded CBOR payload.
    """
    payload = message if isinstance(message, bytes | bytearray) else encode_message(message)
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(ERR_MALFORMED, f"payload of {len(payload)} bytes > {MAX_PAYLOAD}")
    crc = binascii.crc32(payload).to_bytes(CRC_LEN, "little")
    return cobs.encode(bytes(payload) + crc) + DELIMITER


def _ordered(value: Any) -> Any:
    # Integer-keyed maps go out in ascending key order (the byte-exact vectors depend on it).
    if isinstance(value, dict):
        items = list(value.items())
        if all(isinstance(k, int) for k in value):
            items.sort()
        return {k: _ordered(v) for k, v in items}
    if isinstance(value, list | tuple):
        return [_ordered(v) for v in value]
    return value


def encode_message(message: dict[int, Any] | Message) -> bytes:
    """The CBOR payload of a message (keys ascending, ints shortest, floats float64)."""
    if isinstance(message, Message):
        message = message.to_map()
    return cbor2.dumps(_ordered(message))


class FrameDecoder:
    """Streaming frame decoder: `feed(chunk)` returns the payloads of complete, valid frames.

    Never raises on input: bad frames are dropped and counted (`oversize`, `cobs`, `crc`), and
    decoding resynchronises at the next 0x00.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self._skipping = False  # inside an oversize frame: drop bytes up to the next 0x00
        self.frames = 0
        self.oversize = 0
        self.cobs = 0
        self.crc = 0
        self.bytes_in = 0

    def reset(self) -> None:
        """Forget a partial frame (the transport was lost or reopened)."""
        self._pending.clear()
        self._skipping = False

    def feed(self, chunk: bytes) -> list[bytes]:
        self.bytes_in += len(chunk)
        out: list[bytes] = []
        parts = bytes(chunk).split(DELIMITER)
        # Every part but the last is terminated by a delimiter.
        for part in parts[:-1]:
            if self._skipping:
                self._skipping = False
                self._pending.clear()
                continue
            if self._pending:
                self._pending += part
                body = bytes(self._pending)
                self._pending.clear()
            else:
                body = part
            if not body:
                continue  # an empty frame is a flush, ignored silently
            if len(body) > MAX_ENCODED:
                self.oversize += 1
                continue
            payload = self._check(body)
            if payload is not None:
                self.frames += 1
                out.append(payload)
        tail = parts[-1]
        if tail and not self._skipping:
            self._pending += tail
            if len(self._pending) > MAX_ENCODED:
                # Keep at most MAX_ENCODED bytes: count now, skip the rest of this frame.
                self.oversize += 1
                self._pending.clear()
                self._skipping = True
        return out

    def _check(self, body: bytes) -> bytes | None:
        try:
            raw = cobs.decode(body)
        except cobs.DecodeError:
            self.cobs += 1
            return None
        if len(raw) < CRC_LEN + 1:
            self.crc += 1
            return None
        payload, crc = raw[:-CRC_LEN], raw[-CRC_LEN:]
        if binascii.crc32(payload).to_bytes(CRC_LEN, "little") != crc:
            self.crc += 1
            return None
        if len(payload) > MAX_PAYLOAD:
            self.oversize += 1
            return None
        return payload

    def counters(self) -> dict[str, int]:
        return {"frames": self.frames, "crc": self.crc, "cobs": self.cobs,
                "oversize": self.oversize, "bytes_in": self.bytes_in}


# -- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A decoded, validated message; `raw` is the whole map as received (unknown keys too)."""

    raw: dict[int, Any] = field(default_factory=dict, compare=False, repr=False, kw_only=True)
    TYPE = 0

    def to_map(self) -> dict[int, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class Hello(Message):
    node: str
    role: str
    next_seq: int
    first_unacked: int
    fw: str | None = None
    board: str | None = None
    boot_count: int | None = None
    reset_cause: str | None = None
    proto: int | None = None
    unsure: int | None = None     # key 12: seqs from here on were numbered by a lost counter
    TYPE = HELLO

    def to_map(self) -> dict[int, Any]:
        m: dict[int, Any] = {K_TYPE: HELLO, 1: self.node, 2: self.role, 3: self.fw,
                             4: self.board, 5: self.boot_count, 6: self.reset_cause,
                             7: self.next_seq, 8: self.proto, 9: self.first_unacked,
                             12: self.unsure}
        return {k: v for k, v in m.items() if v is not None}


class Record(NamedTuple):
    """One record of a RECORDS message (a tuple: made for every record received, cheaply)."""

    seq: int
    t: int
    kind: int
    flags: int
    body: dict[int, Any]

    @property
    def synced(self) -> bool:
        return not self.flags & FLAG_CLOCK_UNSYNCED

    @property
    def priority(self) -> bool:
        return bool(self.flags & FLAG_PRIORITY)


@dataclass(frozen=True)
class Records(Message):
    from_seq: int
    records: tuple[Record, ...]
    TYPE = RECORDS

    def to_map(self) -> dict[int, Any]:
        return {K_TYPE: RECORDS, 1: self.from_seq,
                2: [[r.seq, r.t, r.kind, r.flags, r.body] for r in self.records]}


@dataclass(frozen=True)
class Ack(Message):
    seq: int
    resume: int | None = None     # key 2: seqs below it are taken; the node goes on from it
    TYPE = ACK

    def to_map(self) -> dict[int, Any]:
        if self.resume is None:
            return {K_TYPE: ACK, K_ACK_SEQ: self.seq}
        return {K_TYPE: ACK, K_ACK_SEQ: self.seq, K_ACK_RESUME: self.resume}


@dataclass(frozen=True)
class Command(Message):
    request_id: int
    name: str
    args: dict[str, Any] | None = None
    TYPE = COMMAND

    def to_map(self) -> dict[int, Any]:
        m: dict[int, Any] = {K_TYPE: COMMAND, 1: self.request_id, 2: self.name}
        if self.args is not None:
            m[3] = self.args
        return m


@dataclass(frozen=True)
class Reply(Message):
    request_id: int
    ok: bool
    result: Any = None
    error: str | None = None
    TYPE = REPLY

    def to_map(self) -> dict[int, Any]:
        m: dict[int, Any] = {K_TYPE: REPLY, 1: self.request_id, 2: self.ok}
        if K_REPLY_RESULT in self.raw:
            m[3] = self.result
        if self.error is not None:
            m[4] = self.error
        return m


@dataclass(frozen=True)
class Time(Message):
    epoch_ms: int
    TYPE = TIME

    def to_map(self) -> dict[int, Any]:
        return {K_TYPE: TIME, K_TIME_MS: self.epoch_ms}


@dataclass(frozen=True)
class Error(Message):
    code: int
    message: str
    ref_type: int | None = None
    TYPE = ERROR

    def to_map(self) -> dict[int, Any]:
        m: dict[int, Any] = {K_TYPE: ERROR, 1: self.code, 2: self.message}
        if self.ref_type is not None:
            m[3] = self.ref_type
        return m


@dataclass(frozen=True)
class OtaOffer(Message):
    kind: str
    manifest: bytes
    mac: bytes
    force: bool = False
    TYPE = OTA_OFFER

    def to_map(self) -> dict[int, Any]:
        m: dict[int, Any] = {K_TYPE: OTA_OFFER, 1: self.kind, 2: self.manifest, 3: self.mac}
        if self.force:
            m[4] = True
        return m


@dataclass(frozen=True)
class OtaChunk(Message):
    tag: bytes
    offset: int
    data: bytes
    TYPE = OTA_CHUNK

    def to_map(self) -> dict[int, Any]:
        return {K_TYPE: OTA_CHUNK, 1: self.tag, 2: self.offset, 3: self.data}


@dataclass(frozen=True)
class OtaState(Message):
    state: str
    have: int = 0
    tag: bytes | None = None
    reason: str | None = None
    version: str | None = None
    TYPE = OTA_STATE

    def to_map(self) -> dict[int, Any]:
        m: dict[int, Any] = {K_TYPE: OTA_STATE, 1: self.tag, 2: self.state, 3: self.have,
                             4: self.reason, 5: self.version}
        return {k: v for k, v in m.items() if v is not None}


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_UINT


def _check_tree(value: Any, what: str, msg_type: int) -> None:
    """Refuse a value nested deeper than MAX_DEPTH or of more than MAX_ITEMS items: a cyclic
    structure (CBOR tags 28/29) would otherwise recurse without end when it is converted."""
    budget = MAX_ITEMS
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        budget -= 1
        if budget < 0 or depth > MAX_DEPTH:
            raise ProtocolError(ERR_MALFORMED, f"{TYPE_NAMES[msg_type]}: {what} nested deeper"
                                f" than {MAX_DEPTH} or larger than {MAX_ITEMS} items"
                                f" (shared or cyclic references are not allowed)", msg_type)
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for kv in v.items() for x in kv)
        elif isinstance(v, list | tuple | set | frozenset):
            stack.extend((x, depth + 1) for x in v)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class _Fields:
    """Typed access to one message map; every failure is ERROR 2 naming the key."""

    def __init__(self, m: dict[Any, Any], msg_type: int) -> None:
        self.m = m
        self.t = msg_type

    def _bad(self, text: str) -> ProtocolError:
        return ProtocolError(ERR_MALFORMED, f"{TYPE_NAMES[self.t]}: {text}", self.t)

    def get(self, key: int, kind: str, required: bool = True) -> Any:
        if key not in self.m:
            if required:
                raise self._bad(f"missing key {key}")
            return None
        v = self.m[key]
        ok = {"uint": _is_uint, "text": lambda x: isinstance(x, str),
              "bool": lambda x: isinstance(x, bool), "map": lambda x: isinstance(x, dict),
              "array": lambda x: isinstance(x, list), "bytes": lambda x: isinstance(x, bytes),
              "any": lambda x: True}[kind](v)
        if not ok:
            if kind == "uint" and type(v) is int:
                raise self._bad(f"key {key} must be uint 0..2^63-1, got {v}"[:120])
            raise self._bad(f"key {key} must be {kind}, got {type(v).__name__}")
        return v


_BODY_VALUE_TYPES = frozenset((int, float, str, bool))


def _record(item: Any, index: int) -> Record:
    """One validated record. Fast path for what cbor2 decodes (exact types); anything else
    goes through the checks that name what is wrong."""
    if type(item) is list and len(item) == 5:
        seq, t, kind, flags, body = item
        if (type(seq) is int and type(t) is int and type(kind) is int and type(flags) is int
                and 1 <= seq <= MAX_UINT and 0 <= t <= MAX_UINT and 0 <= kind <= MAX_UINT
                and 0 <= flags <= MAX_UINT and type(body) is dict):
            for k, v in body.items():     # a loop, not all(...): this runs for every record
                if type(k) is not int or k < 0 or type(v) not in _BODY_VALUE_TYPES:
                    break
            else:
                return Record(seq, t, kind, flags, body)
    return _record_checked(item, index)


def _record_checked(item: Any, index: int) -> Record:
    def bad(text: str) -> ProtocolError:
        return ProtocolError(ERR_MALFORMED, f"RECORDS: record {index}: {text}", RECORDS)

    if not isinstance(item, list) or len(item) != 5:
        raise bad("must be an array [seq, t, kind, flags, body]")
    seq, t, kind, flags, body = item
    for name, v in (("seq", seq), ("t", t), ("kind", kind), ("flags", flags)):
        if not _is_uint(v):
            raise bad(f"{name} must be uint 0..2^63-1, got {v!r}"[:120])
    if seq < 1:
        raise bad("seq must be >= 1")
    if not isinstance(body, dict):
        raise bad("body must be a map")
    for k, v in body.items():
        if not _is_uint(k) or not (_is_number(v) or isinstance(v, str | bool)):
            raise bad(f"body entry {k!r}: {v!r} is not uint => number / text / bool"[:160])
    return Record(seq, t, kind, flags, body)


def is_records(payload: bytes) -> bool:
    """Whether `payload` looks like a RECORDS message from its first bytes (a map whose first
    key is 0 with the value RECORDS, as nodes encode it): such a payload is decoded where it is
    stored (gateway/queue/intake.py). Only a hint: decode_message() decides what it is."""
    return len(payload) > 2 and 0xa1 <= payload[0] <= 0xb7 and payload[1] == K_TYPE \
        and payload[2] == RECORDS


def decode_message(payload: bytes) -> Message:
    """Decode and validate one payload; ProtocolError(code) says which ERROR to answer."""
    fp = io.BytesIO(payload)
    try:
        m = cbor2.CBORDecoder(fp).decode()
    except Exception as exc:  # cbor2 raises several types (and RecursionError) on garbage
        raise ProtocolError(ERR_MALFORMED, f"not CBOR: {exc}") from exc
    if fp.tell() != len(payload):
        raise ProtocolError(ERR_MALFORMED, "trailing bytes after the CBOR message")
    if not isinstance(m, dict):
        raise ProtocolError(ERR_MALFORMED, "a message must be a CBOR map")
    t = m.get(K_TYPE)
    if not _is_uint(t):
        raise ProtocolError(ERR_MALFORMED, "key 0 (message type) missing or not uint")
    if t not in TYPE_NAMES:
        raise ProtocolError(ERR_UNKNOWN_TYPE, f"unknown message type {t}", t)
    f = _Fields(m, t)
    if t == HELLO:
        return Hello(
            node=f.get(1, "text"), role=f.get(2, "text"), next_seq=f.get(7, "uint"),
            first_unacked=f.get(9, "uint"), fw=f.get(3, "text", False),
            board=f.get(4, "text", False), boot_count=f.get(5, "uint", False),
            reset_cause=f.get(6, "text", False), proto=f.get(8, "uint", False),
            unsure=f.get(K_HELLO_UNSURE, "uint", False), raw=m)
    if t == RECORDS:
        items = f.get(2, "array")
        return Records(from_seq=f.get(1, "uint"),
                       records=tuple([_record(r, i) for i, r in enumerate(items)]), raw=m)
    if t == ACK:
        return Ack(seq=f.get(1, "uint"), resume=f.get(K_ACK_RESUME, "uint", False), raw=m)
    if t == COMMAND:
        args = f.get(3, "map", False)
        _check_tree(args, "args", t)
        return Command(request_id=f.get(1, "uint"), name=f.get(2, "text"), args=args, raw=m)
    if t == REPLY:
        result = f.get(3, "any", False)
        _check_tree(result, "result", t)
        return Reply(request_id=f.get(1, "uint"), ok=f.get(2, "bool"), result=result,
                     error=f.get(4, "text", False), raw=m)
    if t == TIME:
        return Time(epoch_ms=f.get(1, "uint"), raw=m)
    if t == OTA_STATE:
        state = f.get(2, "text")
        if state not in OTA_STATES:
            raise f._bad(f"key 2: unknown state {state[:40]!r}; one of {', '.join(OTA_STATES)}")
        return OtaState(state=state, have=f.get(3, "uint"), tag=f.get(1, "bytes", False),
                        reason=f.get(4, "text", False), version=f.get(5, "text", False), raw=m)
    if t == OTA_OFFER:
        return OtaOffer(kind=f.get(1, "text"), manifest=f.get(2, "bytes"),
                        mac=f.get(3, "bytes"), force=bool(f.get(4, "bool", False)), raw=m)
    if t == OTA_CHUNK:
        return OtaChunk(tag=f.get(1, "bytes"), offset=f.get(2, "uint"),
                        data=f.get(3, "bytes"), raw=m)
    return Error(code=f.get(1, "uint"), message=f.get(2, "text"),
                 ref_type=f.get(3, "uint", False), raw=m)


def error_frame(code: int, message: str, ref_type: int | None = None) -> bytes:
    """A ready-to-send ERROR frame (message truncated so the frame always fits)."""
    return encode_frame(Error(code, message[:200], ref_type))
