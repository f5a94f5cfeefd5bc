# Frames on the byte stream: COBS(payload || crc32 LE) || 0x00 (PROTOCOL.md section 1).
import struct
from binascii import crc32
from micropython import const

MAX_PAYLOAD = const(1024)
MAX_ENCODED = const(1040)  # a pending frame larger than this is dropped as oversize


class FrameError(ValueError):
    pass


def cobs_encode(data):
    out = bytearray(b"\x00")  # placeholder for the first code byte
    code_at = 0
    code = 1
    last = len(data) - 1
    for i in range(len(data)):
        b = data[i]
        if b:
            out.append(b)
            code += 1
            if code < 0xFF or i == last:  # a full block at the very end needs no new block
                continue
        out[code_at] = code
        code_at = len(out)
        out.append(0)
        code = 1
    out[code_at] = code
    return out


def cobs_decode(data):
    out = bytearray()
    n = len(data)
    i = 0
    while i < n:
        code = data[i]
        if code == 0:
            raise FrameError("zero in cobs body")
        end = i + code
        if end > n:
            raise FrameError("cobs block past end")
        out.extend(data[i + 1:end])
        i = end
        if code < 0xFF and i < n:
            out.append(0)
    return out


def encode(payload):
    """The whole frame for one payload, trailing 0x00 included."""
    if len(payload) > MAX_PAYLOAD:
        raise FrameError("payload too long")
    body = bytearray(payload)
    body.extend(struct.pack("<I", crc32(payload) & 0xFFFFFFFF))
    out = cobs_encode(body)
    out.append(0)
    return bytes(out)


def decode_body(body):
    """One frame body (between 0x00s) -> payload; FrameError('cobs'|'crc')."""
    try:
        raw = cobs_decode(body)
    except FrameError:
        raise FrameError("cobs")
    if len(raw) < 5:
        raise FrameError("crc")
    payload = bytes(raw[:-4])
    if struct.unpack("<I", raw[-4:])[0] != crc32(payload) & 0xFFFFFFFF:
        raise FrameError("crc")
    return payload


class Deframer:
    """Streaming decoder: feed() any chunks, get whole payloads; bad frames are counted."""

    def __init__(self):
        self.buf = bytearray(MAX_ENCODED)  # preallocated: no growth per byte
        self.n = 0
        self.skipping = False
        self.frames = 0
        self.oversize = 0
        self.cobs = 0
        self.crc = 0

    def reset(self):
        """Forget a partial frame (a new connection): the buffer is kept, not reallocated."""
        self.n = 0
        self.skipping = False

    def feed(self, data):
        out = []
        mv = memoryview(data)
        i = 0
        n = len(data)
        while i < n:
            j = data.find(b"\x00", i)
            end = n if j < 0 else j
            if not self.skipping:
                k = end - i
                if self.n + k > MAX_ENCODED:
                    self.oversize += 1
                    self.skipping = True
                    self.n = 0
                else:
                    self.buf[self.n:self.n + k] = mv[i:end]
                    self.n += k
            if j < 0:
                break
            # a delimiter: finish the pending frame
            if self.skipping:
                self.skipping = False
            elif self.n:
                try:
                    out.append(decode_body(memoryview(self.buf)[:self.n]))
                    self.frames += 1
                except FrameError as e:
                    if e.args[0] == "cobs":
                        self.cobs += 1
                    else:
                        self.crc += 1
            self.n = 0
            i = j + 1
        return out

    def counters(self):
        return {"frames": self.frames, "oversize": self.oversize, "cobs": self.cobs,
                "crc": self.crc}
