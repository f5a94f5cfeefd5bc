# Free-flow toll beacon: reads from an RFID/DSRC reader (line protocol of docs/READER.md)
# become one transaction per passage: a tag's reads belong to one passage until the tag is
# unseen for window_ms (reader clock). The transaction is journaled (PRIORITY) and only then
# acknowledged to the reader, which keeps unacknowledged reads and sends them again.
#
# Exactly once across a crash between the journal write and the acknowledgement: before the
# journal write the node appends "seq,tag,rseq" to toll_acks.txt (seq = the journal's
# next_seq). On boot an entry whose seq the journal has not reached was never journaled and
# is dropped; the others say "reads of tag up to rseq are already in a transaction", so a
# resent read burst is recognised and not charged twice.
#
# hw: reader_read() -> bytes (b"" when nothing), reader_write(bytes).
from array import array
from micropython import const

from .. import proto

ACKS = "toll_acks.txt"
_KEEP = const(32)  # acknowledged passages remembered for resent reads
_TAG_MAX = const(32)  # hex digits of an EPC kept (128 bits; longer ones are cut)
_MAX_LINE = const(120)

# record kinds and body keys (PROTOCOL.md 2.1)
_K_TRANSACTION = const(20)
_K_READER = const(21)
_T_TAG = const(1)
_T_LANE = const(2)
_T_ENTRY = const(3)
_T_EXIT = const(4)
_T_READS = const(5)
_T_RSSI = const(6)
_T_ANTENNAS = const(7)
_T_RSEQ = const(8)
_S_STATE = const(1)
_S_READS = const(2)
_S_BAD = const(3)
_S_DUPS = const(4)
_S_DETAIL = const(5)

# a passage: [best antenna, entry ms, exit ms, reads, best rssi, antenna bits, first rseq,
# last rseq, when the journal last refused it (reader ms, 0: never)]
_ANT = const(0)
_ENTRY = const(1)
_EXIT = const(2)
_N = const(3)
_BEST = const(4)
_BITS = const(5)
_FIRST = const(6)
_LAST = const(7)
_RETRY = const(8)


def checksum(body):
    c = 0
    for b in body:
        c ^= b
    return c


def line(body):
    return b"$%s*%02X\r\n" % (body, checksum(body))


class TollRole:
    name = "toll"
    commands = ("toll.status",)

    def __init__(self, config, emit, hw=None, journal=None, path=ACKS):
        self.config = config
        self.emit = emit
        self.hw = hw
        self.journal = journal
        self.path = path
        self.open = {}  # tag (bytes) -> passage
        self.buf = b""
        self.reader_now = -1  # newest reader clock seen (reads and heartbeats)
        # the last _KEEP acknowledged passages, in buffers allocated once, here at boot (tags
        # kept as new objects would pin small blocks all over a small heap): reads of tag i
        # (r_tags[i][:r_len[i]], hash r_hash[i]) up to r_rseq[i] are journaled, in the
        # transaction with seq r_seq[i]
        self.r_tags = [bytearray(_TAG_MAX) for _ in range(_KEEP)]
        self.r_len = bytearray(_KEEP)
        self.r_hash = array("i", [0] * _KEEP)
        self.r_rseq = array("i", [0] * _KEEP)
        self.r_seq = array("i", [0] * _KEEP)
        self.r_next = 0  # the slot the next one goes to (the oldest when full)
        self.state = None
        self.detail = ""
        self.heard_at = None
        self.reads = 0
        self.dups = 0
        self.bad = 0
        self.transactions = 0
        self.refused = 0
        self._load()

    # -- the acknowledgement log ---------------------------------------------------------
    def _load(self):
        hi = self.journal.next_seq if self.journal is not None else None
        try:
            with open(self.path) as f:
                for ln in f:
                    p = ln.strip().split(",")
                    if len(p) != 3:
                        continue
                    try:
                        seq, rseq = int(p[0]), int(p[2])
                    except ValueError:
                        continue
                    if hi is None or seq < hi:  # else: never journaled (crash before append)
                        self._remember(seq, p[1].encode(), rseq)
        except OSError:
            return
        self._rewrite()

    def _remember(self, seq, tag, rseq):
        i = self.r_next
        n = min(len(tag), _TAG_MAX)
        self.r_tags[i][:n] = tag[:n]
        self.r_len[i] = n
        self.r_hash[i] = hash(tag) & 0x3FFFFFFF
        self.r_rseq[i] = rseq
        self.r_seq[i] = seq
        self.r_next = (i + 1) % _KEEP

    def acked(self, tag):
        """The highest rseq of tag already in a journaled transaction (0: none known)."""
        hi = 0
        h = hash(tag) & 0x3FFFFFFF
        for i in range(_KEEP):
            if self.r_hash[i] == h and self.r_len[i] and self.r_rseq[i] > hi \
                    and self._tag(i) == tag:
                hi = self.r_rseq[i]
        return hi

    def _tag(self, i):
        return bytes(self.r_tags[i][:self.r_len[i]])

    def _rewrite(self):
        with open(self.path, "w") as f:
            for k in range(_KEEP):
                i = (self.r_next + k) % _KEEP
                if self.r_len[i]:
                    f.write("%d,%s,%d\n" % (self.r_seq[i], self._tag(i).decode(),
                                            self.r_rseq[i]))

    # -- main loop -----------------------------------------------------------------------
    def step(self, t, _read=None):
        now = int(t * 1000)
        hw = self.hw
        data = hw.reader_read()
        while data:
            self.feed(data, now)
            data = hw.reader_read()
        self.close_due()
        if self.heard_at is not None and self.state != "silent" and \
                now - self.heard_at > self.config.get("reader_silent_ms"):
            self._status("silent", "no heartbeat for %d ms" % (now - self.heard_at))

    def feed(self, data, now=0):
        buf = self.buf + data if self.buf else data
        start = 0
        while True:
            i = buf.find(b"\n", start)
            if i < 0:
                break
            self.line(buf[start:i], now)
            start = i + 1
        if len(buf) - start > _MAX_LINE:  # no end of line in sight: noise
            self.bad += 1
            start = len(buf)
        self.buf = buf[start:] if start < len(buf) else b""

    def line(self, ln, now=0):
        ln = ln.strip()
        if not ln:
            return
        n = len(ln)
        if n < 5 or ln[0] != 0x24 or ln[n - 3] != 0x2A:  # "$" ... "*XX"
            self.bad += 1
            return
        body = ln[1:n - 3]
        try:
            ok = int(ln[n - 2:], 16) == checksum(body)
            f = body.split(b",")
            if not ok:
                self.bad += 1
            elif f[0] == b"R" and len(f) == 6:
                self.heard_at = now
                self.read(int(f[1]), f[2], int(f[3]), int(f[4]), int(f[5]))
            elif f[0] == b"H" and len(f) == 3:
                self.heard_at = now
                ms = int(f[1])
                if ms > self.reader_now:
                    self.reader_now = ms
                st = f[2].decode()
                if st == "OK":
                    if self.state != "ok":
                        self._status("ok", "")
                elif self.state != "fault" or self.detail != st:
                    self._status("fault", st)
            else:
                self.bad += 1
        except ValueError:
            self.bad += 1

    def read(self, rseq, tag, ant, rssi, ms):
        """One tag read: add it to the tag's passage (a new one after window_ms unseen)."""
        p = self.open.get(tag)
        if p is not None and p[_FIRST] <= rseq <= p[_LAST]:
            self.dups += 1  # resent while its passage is still open
            return
        if (p is None or rseq < p[_FIRST]) and rseq <= self.acked(tag):
            self.dups += 1  # resent after an acknowledgement got lost: already charged
            return
        self.reads += 1
        if ms > self.reader_now:
            self.reader_now = ms
        if p is not None and ms - p[_EXIT] >= self.config.get("window_ms"):
            self.close(tag, p)
            p = self.open.get(tag)
        if p is None:
            self.open[tag] = [ant, ms, ms, 1, rssi, 1 << (ant - 1), rseq, rseq, 0]
            return
        if ms < p[_ENTRY]:
            p[_ENTRY] = ms
        if ms > p[_EXIT]:
            p[_EXIT] = ms
        p[_N] += 1
        if rssi > p[_BEST]:
            p[_BEST] = rssi
            p[_ANT] = ant
        p[_BITS] |= 1 << (ant - 1)
        if rseq < p[_FIRST]:
            p[_FIRST] = rseq
        if rseq > p[_LAST]:
            p[_LAST] = rseq

    def close_due(self):
        now = self.reader_now
        window = self.config.get("window_ms")  # read live: config.set applies at once
        due = [tag for tag, p in self.open.items()
               if now - (p[_EXIT] if p[_EXIT] > p[_RETRY] else p[_RETRY]) >= window]
        for tag in due:
            self.close(tag, self.open[tag])

    def lane(self, ant):
        lanes = self.config.get("antenna_lanes")
        return lanes[ant - 1] if lanes and ant <= len(lanes) else ant

    def close(self, tag, p):
        """Journal the passage's transaction, then acknowledge its reads to the reader."""
        j = self.journal
        seq = j.next_seq if j is not None else 0
        rseq = p[_LAST]
        with open(self.path, "a") as f:  # the intent first: see the top of this file
            f.write("%d,%s,%d\n" % (seq, tag.decode(), rseq))
        got = self.emit(_K_TRANSACTION, proto.F_PRIORITY, {
            _T_TAG: tag.decode(), _T_LANE: self.lane(p[_ANT]), _T_ENTRY: p[_ENTRY],
            _T_EXIT: p[_EXIT], _T_READS: p[_N], _T_RSSI: p[_BEST], _T_ANTENNAS: p[_BITS],
            _T_RSEQ: rseq})
        if not got:  # journal full: keep the passage, the reader keeps its reads; retry
            self.refused += 1
            p[_RETRY] = self.reader_now
            self._rewrite()
            return False
        del self.open[tag]
        self.transactions += 1
        self._remember(got, tag, rseq)
        if self.transactions % _KEEP == 0:
            self._rewrite()  # keep the log file short (at most 2 * _KEEP lines)
        self.hw.reader_write(line(b"A,%s,%d" % (tag, rseq)))
        return True

    def _status(self, state, detail):
        self.state = state
        self.detail = detail
        self.emit(_K_READER, 0 if state == "ok" else proto.F_PRIORITY, {
            _S_STATE: state, _S_READS: self.reads, _S_BAD: self.bad, _S_DUPS: self.dups,
            _S_DETAIL: detail})

    def command(self, name, args):
        return {"reader": self.state, "detail": self.detail, "open": len(self.open),
                "reads": self.reads, "duplicates": self.dups, "bad_lines": self.bad,
                "transactions": self.transactions, "refused": self.refused}


Role = TollRole  # what App.make_role takes from roles/<name>.py
