"""The journal on LittleFS2 (vfs.VfsLfs2), the filesystem an ESP32 mounts: a read handle there
does not see bytes appended later through another handle, which once made RECORDS frames carry
truncated records (issue 9). Every record read for sending must match its journal head."""

from __future__ import annotations

import json

from support.micropython import run_stdout

# The journal is imported from the host before / becomes the node's flash: a LittleFS2 image
# in a host file (a RAM device would take the heap the node needs).
PRELUDE = r"""
import json
from roadside_node import cbor, proto
from roadside_node.journal import Journal
from vboard.flash import mount_image
mount_image(%r, 64)
"""


def mp_lines(tmp_path, code: str, heapsize: str = "96k") -> list[str]:
    prelude = PRELUDE % str(tmp_path / "flash.img")
    return run_stdout(prelude + code, heapsize=heapsize).splitlines()


def test_read_after_append_sees_the_new_record(tmp_path):
    out = mp_lines(tmp_path, """
j = Journal(); j.load()
j.append(1, 1, 1, {1: 1.5})
print(json.dumps(cbor.loads(j.read(1))))
j.append(2, 1, 1, {1: 2.5})          # appended after the first read opened the file
print(json.dumps(cbor.loads(j.read(2))))
print(json.dumps(cbor.loads(j.read(1))))
""")
    assert [json.loads(line) for line in out[-3:]] == [
        [1, 1, 1, 1, {"1": 1.5}], [2, 2, 1, 1, {"1": 2.5}], [1, 1, 1, 1, {"1": 1.5}]]


def test_interleaved_appends_reads_acks_and_compactions_keep_every_frame_whole(tmp_path):
    """The pattern that stalled a node: records appended while earlier ones are read for
    sending, ACKs dropping them, compactions rewriting the file. Every frame built from the
    reads must decode whole, in seq order, and every record must arrive exactly once."""
    out = mp_lines(tmp_path, """
j = Journal(max_bytes=60000); j.load()
sent_upto = 0      # highest seq put into a frame
got = 0            # highest seq "the gateway" has
bad = 0
frames = 0
for step in range(1500):
    for _ in range(1 + step % 3):
        j.append(step, 1, 1, {1: 1.5 * step, 2: 0.25, 3: step})
    # read for sending, as Session.pump does: at most 8 records a frame
    seq = start = max(sent_upto + 1, j.first_unacked)
    recs = []
    while seq < j.next_seq and len(recs) < 8:
        recs.append(j.read(seq))
        seq += 1
    if recs:
        frame = proto.records(j.first_unacked, recs)
        frames += 1
        try:
            msg = cbor.loads(frame)
            seqs = [r[0] for r in msg[2]]
            if seqs != list(range(start, seq)) or msg[1] != j.first_unacked:
                bad += 1
            for s in seqs:
                if s == got + 1:
                    got = s
        except Exception as e:
            bad += 1
        sent_upto = seq - 1
    if step % 5 == 4:
        j.ack(got)        # ACKs come in bursts; compaction runs when 4 KB lead the file
    if step % 50 == 49:
        sent_upto = got   # go-back-N now and then: re-read records already sent
print(json.dumps({"bad": bad, "frames": frames, "got": got, "next": j.next_seq,
                  "rereads": getattr(j, "rereads", None)}))
""")
    r = json.loads(out[-1])
    assert r["bad"] == 0, r
    assert r["frames"] > 1000 and r["got"] >= r["next"] - 1 - 8, r
    assert r["rereads"] == 0, r      # one handle sees its own appends: no mismatch to repair


def test_a_record_that_does_not_match_its_head_is_reread_then_never_sent(tmp_path):
    """Flash damage under a held record: the read is retried on a fresh handle and counted;
    when it still does not match it is not returned (so never framed), and once it is the
    first held record it is dropped, counted, and the seqs after it go on."""
    out = mp_lines(tmp_path, """
j = Journal(); j.load()
for i in range(3):
    j.append(i, 1, 1, {1: 10 + i})
off = j.offs[1] + 6 + 3                   # inside the body of seq 2
j.close()
with open("journal.bin", "r+b") as f:     # damage it behind the journal's back
    f.seek(off)
    f.write(b"\\xee")
print(json.dumps([cbor.loads(j.read(1))[4], j.read(2), cbor.loads(j.read(3))[4], j.read(2),
                  j.rereads, j.unreadable]))
j.drop_unreadable(2)                      # not first yet: kept
print(json.dumps([j.first_unacked, j.count]))
j.ack(1)
j.drop_unreadable(2)
print(json.dumps([j.first_unacked, j.count, cbor.loads(j.read(3))[0], j.acked]))
""")
    logged = [line for line in out if line.startswith("journal:")]
    out = [line for line in out if not line.startswith("journal:")]
    assert json.loads(out[-3]) == [{"1": 10}, None, {"1": 12}, None, 1, 1]
    assert json.loads(out[-2]) == [1, 3]
    assert json.loads(out[-1]) == [3, 1, 3, 2]
    assert logged == ["journal: seq 2 did not match its head: reopening the file",
                      "journal: seq 2 unreadable on flash: not sent",
                      "journal: seq 2 dropped as unreadable"]
