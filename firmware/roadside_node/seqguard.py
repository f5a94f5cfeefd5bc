# The guards of the node's counter that run rarely, kept out of journal.py so that their code
# stays off the heap of an ordinary boot: reading the state's other copies after a loss, and
# ACK key 2 (PROTOCOL.md 2.2 rule 7), where the gateway already stored seqs below `to`.
import os
import struct
from binascii import crc32

from . import cbor

_HEAD = 6  # journal.py's entry head: [len u16 LE][crc32 u32 LE]


def recover_state(j, read_state, _exists):
    """(state, trusted) when state.json is missing or damaged. A cut between the save's two
    renames leaves the new copy whole in the temp file (trusted); else the previous copy,
    state.bak, one save older at most, or nothing: the counter is unsure. journal.py passes
    its read_state and _exists: this module does not import journal.py, which imports it."""
    path = j.state_path
    if not _exists(path):
        st = read_state(path + ".tmp")
        if st is not None:
            return st, True
    bak = path[:-4] + "bak"
    st = read_state(bak)
    if st is not None or _exists(path) or _exists(bak) or _exists(j.path):
        print("journal: %s missing or damaged: %s; seqs unsure until the gateway answers"
              % (path, "using its previous copy" if st else "no copy"))
    return st or {}, False


def drop_unreadable(j, seq):
    """The first held record does not match its head even through a fresh handle: it is lost,
    counted in `unreadable`, and the next RECORDS' `from` tells the gateway (a counted gap)."""
    if seq == j.first and j.count:
        print("journal: seq", seq, "dropped as unreadable")
        j.ack(seq)


def resume(j, to):
    """Go on from seq `to`. The gateway says so only when the node's counter was lost (an
    unsure HELLO) or is behind what it stored, so the held records, which it cannot have (never
    sent with these seqs), are renumbered from `to` on. Idempotent: a repeated answer changes
    nothing."""
    if j.count and to > j.first:
        print("journal: renumbering seqs %d..%d from %d (the gateway holds seqs up to %d)"
              % (j.first, j.next_seq - 1, to, to - 1))
        _renumber(j, to)
        j.acked = to - 1
    elif not j.count and to > j.next_seq:
        print("journal: next_seq %d -> %d (the gateway holds seqs up to %d)"
              % (j.next_seq, to, to - 1))
        j.next_seq = j.first = to
        j.acked = to - 1
    j.unsure = 0
    j._saved_next = max(j._saved_next, to)
    j._save()


def _renumber(j, to):
    """Rewrite journal.bin with the held records as seqs to, to + 1, ... (temp file + rename:
    a power cut leaves the old numbering or the new, and the next HELLO redoes it). Records are
    re-checked against their heads on the way."""
    j.close()
    tmp = j.path + ".tmp"
    offs, h, n = j.offs, j.h, j.count
    with open(j.path, "rb") as f, open(tmp, "wb") as out:
        for i in range(n):
            off = offs[h + i]
            f.seek(off)
            ln, crc = struct.unpack("<HI", f.read(_HEAD))
            rec = f.read(ln)
            if ln != offs[h + i + 1] - off - _HEAD or crc32(rec) & 0xFFFFFFFF != crc:
                raise OSError("journal: seq %d unreadable while renumbering" % (j.first + i))
            r = cbor.Reader(rec)
            r.i = 1
            r.value()  # past the old seq: [seq, t, kind, flags, body] keeps the rest
            w = cbor.Writer()
            w.array(5)
            w.int(to + i)
            new = bytes(w.buf) + rec[r.i:]
            out.write(struct.pack("<HI", len(new), crc32(new) & 0xFFFFFFFF))
            out.write(new)
        out.flush()
    os.rename(tmp, j.path)
    hi, torn = j._scan()
    if torn or hi != to + n - 1 or j.count != n:
        raise OSError("journal: the renumbered file does not read back")
    j.next_seq = hi + 1
