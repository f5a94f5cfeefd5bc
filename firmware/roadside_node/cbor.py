# CBOR (RFC 8949) for the subset the protocol uses: ints up to 64 bit, text, bytes, arrays,
# maps, bool, null, floats. Definite lengths only, ints in shortest form, floats always
# float64 (like cbor2.dumps), map keys sorted (uint ascending, then text shorter-first) so
# encodings are byte-exact although MicroPython dicts are unordered.
import struct
from micropython import const

_MAX_DEPTH = const(16)
_INF = float("inf")  # nesting bound: a hostile frame cannot exhaust the C stack


class CBORError(ValueError):
    pass


class Writer:
    """Appends CBOR items to one bytearray: builders call head()/text()... in a fixed order."""

    def __init__(self, buf=None):
        self.buf = bytearray() if buf is None else buf

    def head(self, major, n):
        b = self.buf
        m = major << 5
        if n < 24:
            b.append(m | n)
        elif n < 0x100:
            b.append(m | 24)
            b.append(n)
        elif n < 0x10000:
            b.append(m | 25)
            b.extend(struct.pack(">H", n))
        elif n < 0x100000000:
            b.append(m | 26)
            b.extend(struct.pack(">I", n))
        elif n < 0x10000000000000000:
            b.append(m | 27)
            b.extend(n.to_bytes(8, "big"))
        else:
            raise CBORError("int out of range")

    def int(self, n):
        if n >= 0:
            self.head(0, n)
        else:
            self.head(1, -1 - n)

    def text(self, s):
        e = s.encode()
        self.head(3, len(e))
        self.buf.extend(e)

    def bytes(self, v):
        self.head(2, len(v))
        self.buf.extend(v)

    def array(self, n):
        self.head(4, n)

    def map(self, n):
        self.head(5, n)

    def bool(self, v):
        self.buf.append(0xF5 if v else 0xF4)

    def null(self):
        self.buf.append(0xF6)

    def float(self, f):
        if f != f or f in (_INF, -_INF):  # as cbor2 does: non-finite floats as float16
            self.buf.extend(b"\xf9\x7e\x00" if f != f else
                            (b"\xf9\x7c\x00" if f > 0 else b"\xf9\xfc\x00"))
            return
        self.buf.append(0xFB)
        self.buf.extend(struct.pack(">d", f))

    def raw(self, data):
        self.buf.extend(data)

    def value(self, v, depth=0):
        if depth > _MAX_DEPTH:
            raise CBORError("too deep")
        if v is None:
            self.null()
        elif v is True or v is False:
            self.bool(v)
        elif isinstance(v, int):
            self.int(v)
        elif isinstance(v, float):
            self.float(v)
        elif isinstance(v, str):
            self.text(v)
        elif isinstance(v, (bytes, bytearray, memoryview)):
            self.bytes(v)
        elif isinstance(v, (list, tuple)):
            self.array(len(v))
            for x in v:
                self.value(x, depth + 1)
        elif isinstance(v, dict):
            self.map(len(v))
            for k in sorted_keys(v):
                self.value(k, depth + 1)
                self.value(v[k], depth + 1)
        else:
            raise CBORError("cannot encode " + type(v).__name__)


def _key_order(k):
    # ints before text; ints numerically (negatives after positives as CBOR major 1 sorts
    # after major 0), text by (encoded length, bytes) as deterministic CBOR wants
    if isinstance(k, int):
        return (0, k) if k >= 0 else (1, -1 - k)
    if isinstance(k, str):
        e = k.encode()
        return (3, len(e), e)
    return (9, 0)


def sorted_keys(d):
    return sorted(d, key=_key_order)


def dumps(v):
    w = Writer()
    w.value(v)
    return bytes(w.buf)


def _half(h):
    # float16 -> float (no struct 'e' on every port)
    s = -1.0 if h & 0x8000 else 1.0
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        return s * m * 2.0 ** -24
    if e == 31:
        return s * float("inf") if m == 0 else float("nan")
    return s * (1 + m / 1024) * 2.0 ** (e - 15)


class Reader:
    def __init__(self, data):
        self.d = data
        self.i = 0

    def _take(self, n):
        i = self.i
        j = i + n
        if j > len(self.d):
            raise CBORError("truncated")
        self.i = j
        return self.d[i:j]

    def _arg(self, info):
        if info < 24:
            return info
        if info == 24:
            return self._take(1)[0]
        if info == 25:
            return struct.unpack(">H", self._take(2))[0]
        if info == 26:
            return struct.unpack(">I", self._take(4))[0]
        if info == 27:
            return int.from_bytes(self._take(8), "big")
        raise CBORError("indefinite or reserved length")

    def value(self, depth=0):
        if depth > _MAX_DEPTH:
            raise CBORError("too deep")
        ib = self._take(1)[0]
        major = ib >> 5
        info = ib & 0x1F
        if major == 7:
            if info == 20:
                return False
            if info == 21:
                return True
            if info == 22:
                return None
            if info == 25:
                return _half(struct.unpack(">H", self._take(2))[0])
            if info == 26:
                return struct.unpack(">f", self._take(4))[0]
            if info == 27:
                return struct.unpack(">d", self._take(8))[0]
            raise CBORError("unsupported simple value")
        n = self._arg(info)
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major == 2:
            return bytes(self._take(n))
        if major == 3:
            try:
                return str(self._take(n), "utf-8")
            except UnicodeError:
                raise CBORError("bad utf-8")
        if major == 4:
            if n > len(self.d) - self.i:  # each item needs >= 1 byte: no huge allocation
                raise CBORError("truncated")
            return [self.value(depth + 1) for _ in range(n)]
        if major == 5:
            if 2 * n > len(self.d) - self.i:
                raise CBORError("truncated")
            out = {}
            for _ in range(n):
                k = self.value(depth + 1)
                if isinstance(k, (list, dict)):
                    raise CBORError("unhashable key")
                out[k] = self.value(depth + 1)
            return out
        raise CBORError("tags not supported")


def loads(data):
    r = Reader(data)
    try:
        v = r.value()
    except (CBORError, MemoryError):  # out of heap is no fault of the bytes: the caller's
        raise
    except Exception as e:  # any slip in a hostile input is a decode error, not a crash
        raise CBORError("bad cbor: %r" % (e,))
    if r.i != len(data):
        raise CBORError("trailing bytes")
    return v
