# The node journal (PROTOCOL.md 2.3): records are appended here before they are sent and
# dropped only when acked. Layout in NODE_DIR:
#   journal.bin  append-only entries [len u16 LE][crc32 u32 LE][record CBOR]; a torn or corrupt
#                tail (power cut mid-write) is cut off on load by rewriting the good prefix
#   state.json   {"next_seq", "acked", "boot_count", "dropped_full", "unsure", "crc"}, written
#                atomically (temp file + rename). next_seq may lag the journal but never leads
#                it: a record is flushed to journal.bin before state.json may say next_seq > its
#                seq. The previous copy is kept as state.bak (renamed, not rewritten), so one
#                damaged file cannot lose the counter; "crc" catches a damaged digit.
#   unsure       when no good newest state was found (lost, damaged, a replaced board keeping
#                its id), the counter may be behind what the gateway already stored: records
#                from seq `unsure` on are not sent until the gateway answered HELLO (key 12),
#                and renumbered above what it holds when it says so (ACK key 2, `resume`).
# Only offsets are kept in RAM (4 bytes a record, in chunks of 128: Offsets); records are read
# back from the file. The offsets are never copied after load: an ACK moves a head index, compaction shifts them in
# place (a copy per ACK of a 2,000-record backlog fragmented a 112k heap into MemoryError).
# One handle both appends and reads: on LittleFS (the ESP32's filesystem) a second handle opened
# for reading does not see bytes appended later through the first. Every record read back is
# checked against the length and CRC of its head before it may go into a frame.
import json
import os
import struct
from array import array
from binascii import crc32
from micropython import const

from . import cbor, proto

_JOURNAL = const("journal.bin")
_STATE = const("state.json")
_HEAD = const(6)
_COMPACT_AT = const(4096)  # rewrite the file once this many acked bytes lead it
_CHUNK = const(128)  # offsets per chunk: 512 bytes


class Offsets:
    """A growable array of u32 in chunks of 128 (512 bytes each). One array grown append by
    append needs ever larger contiguous blocks (2.7 KB for 700 records): in a fragmented
    heap a full journal then failed its next append, and the boot that followed failed
    indexing it, again and again (a reset loop, issue 9). A chunk always fits somewhere."""

    def __init__(self):
        self.chunks = [array("I", bytes(4 * _CHUNK))]
        self.n = 1  # entries in use (offs[0] always exists)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.chunks[i >> 7][i & 127]

    def __setitem__(self, i, v):
        self.chunks[i >> 7][i & 127] = v

    def append(self, v):
        i = self.n
        if i >> 7 == len(self.chunks):
            self.chunks.append(array("I", bytes(4 * _CHUNK)))
        self.chunks[i >> 7][i & 127] = v
        self.n = i + 1

    def clear(self):
        """One entry (0) again; the chunks beyond the first are given back."""
        del self.chunks[1:]
        self.chunks[0][0] = 0
        self.n = 1


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
    os.rename(tmp, path)


def _state_crc(st):
    return crc32(b"%d %d %d %d %d" % (st["next_seq"], st["acked"], st["boot_count"],
                                     st["dropped_full"], st.get("unsure", 0))) & 0xFFFFFFFF


def read_state(path):
    """The state dict in `path`, or None when it is missing or damaged."""
    try:
        with open(path) as f:
            st = json.load(f)
        if "crc" in st and st["crc"] != _state_crc(st):  # no crc: saved before it existed
            return None
        return st
    except Exception:  # missing, not JSON, not a map, a key or type wrong
        return None


def record_seq(rec):
    if not rec or rec[0] != 0x85:  # array(5)
        raise cbor.CBORError("not a record")
    r = cbor.Reader(rec)
    r.i = 1
    seq = r.value()
    if type(seq) is not int or seq < 1:
        raise cbor.CBORError("bad seq")
    return seq


class Journal:
    def __init__(self, max_bytes=32768, path=_JOURNAL, state=_STATE):
        self.max_bytes = max_bytes
        self.path = path
        self.state_path = state
        self.next_seq = 1  # the seq the next record gets
        self.acked = 0
        self.boot_count = 0
        self.dropped_full = 0
        self.unsure = 0  # seqs from here on may collide with an earlier life (header comment)
        self.first = 1  # lowest seq held (== next_seq when empty)
        # offs[h:e + 1]: the file offset of each held record, then the end offset; entries
        # outside that range are stale (kept so the array does not shrink and regrow)
        self.offs = Offsets()
        self.h = 0
        self.e = 0
        self.dead = 0  # acked bytes still at the head of the file
        self._saved_next = 1  # next_seq as state.json has it
        self._f = None  # journal.bin, opened "a+b": appends go to the end, reads seek
        self.rereads = 0  # records that did not match their head: handle reopened, read again
        self.unreadable = 0  # ... and still did not match: given up (counted, never sent)
        self._bad = 0  # the seq found unreadable (read() answers None without rereading)

    # -- boot ---------------------------------------------------------------------------
    def load(self, boot=True):
        st = read_state(self.state_path)
        trusted = st is not None
        if st is None and (_exists(self.path) or _exists(self.state_path[:-4] + "bak")):
            from .seqguard import recover_state  # lost or damaged: only then
            st, trusted = recover_state(self, read_state, _exists)
        elif st is None:  # a first boot, or a cut before the first save completed
            st = read_state(self.state_path + ".tmp") or {}
        self.acked = int(st.get("acked", 0))
        self.boot_count = int(st.get("boot_count", 0)) + (1 if boot else 0)
        self.dropped_full = int(st.get("dropped_full", 0))
        saved = max(int(st.get("next_seq", 1)), self.acked + 1)
        seqs_hi, torn = self._scan()
        self.next_seq = max(saved, seqs_hi + 1)
        if not self.count:
            self.first = self.next_seq
        self._saved_next = saved
        # Not the newest good state: the gateway may hold seqs at or above next_seq already.
        self.unsure = int(st.get("unsure", 0)) if trusted else self.next_seq
        if torn or self.dead:
            self.compact()
        self._save()

    def _scan(self):
        """Index journal.bin; returns (highest seq seen, whether a bad tail was found)."""
        self.offs.clear()
        self.h = self.e = 0
        self.dead = 0
        hi = 0
        prev = 0
        off = 0
        torn = False
        first = 0
        try:
            f = open(self.path, "rb")
        except OSError:
            return 0, False
        with f:
            while True:
                head = f.read(_HEAD)
                if not head:
                    break
                if len(head) < _HEAD:
                    torn = True
                    break
                n, crc = struct.unpack("<HI", head)
                rec = f.read(n)
                if len(rec) < n or crc32(rec) & 0xFFFFFFFF != crc:
                    torn = True
                    break
                try:
                    seq = record_seq(rec)
                except Exception:
                    torn = True
                    break
                if prev and seq != prev + 1:
                    torn = True
                    break
                prev = seq
                hi = seq
                end = off + _HEAD + n
                if seq <= self.acked:
                    self.dead = end  # acked before the power cut: skip, compact away
                else:
                    if not first:
                        first = seq
                    self.offs.append(end)
                    self.e += 1
                off = end
        # offs[0] is where the first held record starts
        self.offs[0] = self.dead
        self.first = first if first else hi + 1
        if torn:
            print("journal: torn tail cut at", off)
        return hi, torn

    # -- state --------------------------------------------------------------------------
    def _save(self):
        st = {"next_seq": self._saved_next, "acked": self.acked, "boot_count": self.boot_count,
              "dropped_full": self.dropped_full, "unsure": self.unsure}
        st["crc"] = _state_crc(st)
        path = self.state_path
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(st))
            f.flush()
        try:
            os.rename(path, path[:-4] + "bak")  # the previous copy stays whole: state.bak
        except OSError:
            pass  # the first save
        os.rename(tmp, path)

    def resume(self, to):
        """ACK key 2: go on from seq `to` (seqguard.py; imported only when it comes)."""
        from .seqguard import resume
        resume(self, to)

    def confirm(self):
        """The gateway answered an unsure HELLO without `resume`: the numbering stands."""
        if self.unsure:
            self.unsure = 0
            self._save()

    def mark_sent(self, seq):
        """Call before sending seq: state.json's next_seq then counts it as produced."""
        if seq + 1 > self._saved_next:
            self._saved_next = seq + 1
            self._save()

    def flush_state(self):
        """Persist next_seq for every journaled record (used on a clean stop or reboot)."""
        self._saved_next = self.next_seq
        self._save()

    # -- records ------------------------------------------------------------------------
    @property
    def count(self):
        return self.e - self.h

    @property
    def used(self):
        return self.offs[self.e] - self.offs[self.h]

    @property
    def first_unacked(self):
        return self.first if self.count else self.next_seq

    def append(self, t, kind, flags, body):
        """Journal a new record; returns its seq, or 0 when the journal is full (counted)."""
        rec = proto.record(self.next_seq, t, kind, flags, body)
        size = _HEAD + len(rec)
        limit = self.max_bytes
        if flags & proto.F_PRIORITY:
            limit += limit // 4
        if self.used + size > limit:
            self.dropped_full += 1
            self._save()
            return 0
        f = self._file()
        f.write(struct.pack("<HI", len(rec), crc32(rec) & 0xFFFFFFFF))
        f.write(rec)
        f.flush()
        seq = self.next_seq
        if not self.count:
            self.first = seq
        if self.e + 1 >= len(self.offs) and self.h:
            self._rebase()  # reuse the acked head of the index before growing it
        offs, e = self.offs, self.e + 1
        if e < len(offs):
            offs[e] = offs[e - 1] + size
        else:
            offs.append(offs[e - 1] + size)  # grows to the most ever held, then stays
        self.e = e
        self.next_seq = seq + 1
        return seq

    def _file(self):
        if self._f is None:
            self._f = open(self.path, "a+b")
        return self._f

    def _read_at(self, off, n):
        """The n-byte record at off if its head says length n and its CRC matches, else None."""
        f = self._file()
        f.seek(off)
        head = f.read(_HEAD)
        if len(head) != _HEAD:
            return None
        ln, crc = struct.unpack("<HI", head)
        if ln != n:
            return None
        rec = f.read(n)
        if len(rec) != n or crc32(rec) & 0xFFFFFFFF != crc:
            return None
        return rec

    def _rebase(self):
        """Shift the held offsets to the front, in place. Without it, ACKs move the head index
        up and appends grow the offsets past the most ever held (issue 9,
        tests/e2e/test_line_stress.py)."""
        offs, h = self.offs, self.h
        for i in range(self.e - h + 1):
            offs[i] = offs[h + i]
        self.e -= h
        self.h = 0

    def read(self, seq):
        """The CBOR of a held record, checked against its head; None when it still does not
        match after reopening the file (counted in `unreadable`: it must not be sent)."""
        i = seq - self.first
        if i < 0 or i >= self.count:
            raise IndexError(seq)
        if seq == self._bad:
            return None  # known unreadable: counted and logged once
        i += self.h
        off = self.offs[i]
        n = self.offs[i + 1] - off - _HEAD
        rec = self._read_at(off, n)
        if rec is None:
            self.rereads += 1
            print("journal: seq", seq, "did not match its head: reopening the file")
            self.close()
            rec = self._read_at(off, n)
            if rec is None:
                self.unreadable += 1
                self._bad = seq
                print("journal: seq", seq, "unreadable on flash: not sent")
        return rec

    def drop_unreadable(self, seq):
        """Give up the first held record when read() cannot return it (seqguard.py)."""
        from .seqguard import drop_unreadable
        drop_unreadable(self, seq)

    def ack(self, upto):
        """Drop every record with seq <= upto; returns how many were dropped."""
        if upto <= self.acked or upto < self.first:
            if upto > self.acked and upto < self.next_seq:
                self.acked = upto
            return 0
        k = min(upto, self.next_seq - 1) - self.first + 1
        if k <= 0:
            return 0
        self.acked = self.first + k - 1
        self.h += k
        self.dead = self.offs[self.h]
        self.first += k
        self._save()  # before any compaction: the acked records must never come back
        if self.dead >= _COMPACT_AT or (not self.count and self.dead):
            self.compact()
        return k

    def compact(self):
        """Rewrite journal.bin with only the held records (temp file + rename)."""
        self.close()
        tmp = self.path + ".tmp"
        start = self.offs[self.h]
        end = self.offs[self.e]
        with open(tmp, "wb") as out:
            if end > start:
                with open(self.path, "rb") as f:
                    f.seek(start)
                    left = end - start
                    while left:
                        chunk = f.read(min(512, left))
                        if not chunk:
                            break
                        out.write(chunk)
                        left -= len(chunk)
            out.flush()
        os.rename(tmp, self.path)
        offs, h = self.offs, self.h
        for i in range(self.e - h + 1):  # in place: no second array in a small heap
            offs[i] = offs[h + i] - start
        self.e -= h
        self.h = 0
        self.dead = 0

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None
