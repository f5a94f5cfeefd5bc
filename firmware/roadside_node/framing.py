# Frames on the byte stream: COBS(payload || crc32 LE) || 0x00 (PROTOCOL.md section 1).
import struct
from binascii import crc32
from micropython import const

MAX_PAYLOAD = const(1024)
MAX_ENCODED = const(1040)  # a pending frame larger than this is dropped as oversize
_CHUNK = const(128)  # FrameWriter: bytes per write()


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


def encode(payload):
    """The whole frame for one payload, trailing 0x00 included."""
    if len(payload) > MAX_PAYLOAD:
        raise FrameError("payload too long")
    body = bytearray(payload)
    body.extend(struct.pack("<I", crc32(payload) & 0xFFFFFFFF))
    out = cobs_encode(body)
    out.append(0)
    return bytes(out)


class FrameWriter:
    """Frames without a fresh allocation: a long run of ~1 KB frames each built in new
    buffers fragments a 96k heap into MemoryError (issue 9). A builder writes its payload
    into `body` (allocated once, at boot while the heap is whole) and send() COBS-encodes it
    through a small chunk buffer into write(), a piece at a time (the UART buffers anyway)."""

    def __init__(self, room=MAX_PAYLOAD, chunk=_CHUNK):
        self.room = room  # payload bytes body holds from offset 0 (the CRC follows them)
        self.body = bytearray(room + 4)
        self.body_mv = memoryview(self.body)
        self.out = bytearray(chunk)
        self.out_mv = memoryview(self.out)

    def send(self, at, n, write):
        """Frame the payload in body[at:at + n] (CRC appended in place) and write() it, in
        pieces of at most `chunk` bytes, trailing 0x00 included. Byte-identical to encode()."""
        if n > MAX_PAYLOAD or at + n > self.room:
            raise FrameError("payload too long")
        body = self.body
        src = self.body_mv
        end = at + n + 4
        struct.pack_into("<I", body, at + n, crc32(src[at:at + n]) & 0xFFFFFFFF)
        out = self.out
        om = self.out_mv
        room = len(out)
        w = 0  # bytes waiting in out
        i = at
        while True:
            lim = i + 254 if i + 254 < end else end
            j = body.find(b"\x00", i, lim)
            found = j >= 0
            if not found:
                j = lim
            k = j - i
            if w == room:
                write(om)
                w = 0
            out[w] = 0xFF if k == 254 and not found else k + 1
            w += 1
            while i < j:  # the block's bytes, chunk by chunk
                c = j - i
                if c > room - w:
                    c = room - w
                if not c:
                    write(om)
                    w = 0
                    continue
                if c < 48:  # short runs (most of CBOR): a slice allocates a memoryview
                    q = 0
                    while q < c:
                        out[w + q] = body[i + q]
                        q += 1
                else:
                    om[w:w + c] = src[i:i + c]
                w += c
                i += c
            if found:  # the zero ends this block and is not written
                i = j + 1
            elif k < 254 or i == end:  # the end (a full block at the very end: no new one)
                break
        if w == room:
            write(om)
            w = 0
        out[w] = 0
        write(om[:w + 1])

    def encode(self, payload, write):
        """encode(payload) written to write() without a fresh allocation."""
        n = len(payload)
        if n > MAX_PAYLOAD:
            raise FrameError("payload too long")
        self.body_mv[:n] = payload
        self.send(0, n, write)


def cobs_unstuff(buf, n):
    """COBS-decode buf[:n] in place (the decoded bytes are never longer); returns their
    length. No allocation: a 1 KB frame decoded into fresh buffers needed two 1 KB blocks
    (the decoded bytes, then the payload), which a busy 96k heap could not always give."""
    mv = memoryview(buf)
    i = 0
    w = 0
    while i < n:
        code = buf[i]
        if code == 0:
            raise FrameError("cobs")
        end = i + code
        if end > n:
            raise FrameError("cobs")
        k = code - 1
        mv[w:w + k] = mv[i + 1:end]  # w <= i: a forward copy within the buffer
        w += k
        i = end
        if code < 0xFF and i < n:
            buf[w] = 0
            w += 1
    return w


def decode_body(buf, n):
    """One frame body (buf[:n], between 0x00s; decoded in place) -> payload bytes (its only
    allocation); FrameError('cobs'|'crc')."""
    n = cobs_unstuff(buf, n)
    if n < 5:
        raise FrameError("crc")
    mv = memoryview(buf)
    if struct.unpack_from("<I", buf, n - 4)[0] != crc32(mv[:n - 4]) & 0xFFFFFFFF:
        raise FrameError("crc")
    return bytes(mv[:n - 4])


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
                    out.append(decode_body(self.buf, self.n))
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
