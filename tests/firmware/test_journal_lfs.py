"""The journal on LittleFS2 (vfs.VfsLfs2), the filesystem an ESP32 mounts: a read handle there
does not see bytes appended later through another handle, which once made RECORDS frames carry
truncated records (issue 9). Every record read for sending must match its journal head."""

from __future__ import annotations

import json

from support.micropython import ESP32_HEAP, run_stdout

# / becomes the node's flash: a LittleFS2 image in a host file (a RAM device would take the
# heap the node needs); the firmware stays importable from the host as in the simulator.
PRELUDE = r"""
import json, sys
from vboard.flash import add_host_paths, mount_image
import vboard.blockdev  # loaded before / becomes the image: the package's path is the host's
firmware = sys.path[0]
mount_image(%r, 64)
add_host_paths(firmware)
from roadside_node import cbor, proto
from roadside_node.journal import Journal
"""


def mp_lines(tmp_path, code: str, heapsize: str = ESP32_HEAP) -> list[str]:
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
    logged = [line for line in out if line.startswith("journal: seq")]
    out = [line for line in out if not line.startswith("journal:")]
    assert json.loads(out[-3]) == [{"1": 10}, None, {"1": 12}, None, 1, 1]
    assert json.loads(out[-2]) == [1, 3]
    assert json.loads(out[-1]) == [3, 1, 3, 2]
    assert logged == ["journal: seq 2 did not match its head: reopening the file",
                      "journal: seq 2 unreadable on flash: not sent",
                      "journal: seq 2 dropped as unreadable"]


SHOW = r"""
def show(j, tag):
    print(json.dumps({"tag": tag, "first": j.first_unacked, "next": j.next_seq,
                      "count": j.count, "acked": j.acked, "unsure": j.unsure,
                      "seqs": [cbor.loads(j.read(s))[0] for s in range(j.first, j.next_seq)],
                      "t": [cbor.loads(j.read(s))[1] for s in range(j.first, j.next_seq)]}))
"""


def shown(out: list[str]) -> dict[str, dict]:
    return {d["tag"]: d for d in (json.loads(x) for x in out if x.startswith("{"))}


def test_one_damaged_state_file_does_not_lose_the_counter(tmp_path):
    out = mp_lines(tmp_path, SHOW + """
import os
j = Journal(); j.load()
show(j, "fresh")                 # first boot: nothing saved, so unsure until the gateway says
j.confirm()
for i in range(6):
    j.append(i, 1, 1, {1: i})
j.mark_sent(6)
j.ack(6)                         # all acked: the journal file is compacted to nothing
show(j, "acked")
j.close()
with open("state.json", "r+") as f:      # one damaged digit: still JSON, wrong counter
    s = f.read().replace('"next_seq": 7', '"next_seq": 1')
with open("state.json", "w") as f:
    f.write(s)
j = Journal(); j.load()          # a reboot: the CRC refuses state.json, state.bak is used
show(j, "damaged")
j.close()
os.remove("state.json")
os.remove("state.bak")
j = Journal(); j.load()          # both copies gone and an empty journal
show(j, "lost")
""")
    s = shown(out)
    assert s["fresh"]["unsure"] == 1
    assert s["acked"]["next"] == 7 and s["acked"]["count"] == 0
    # state.bak is the save before the last: the counter is right, the node still asks
    assert s["damaged"]["next"] == 7 and s["damaged"]["unsure"] == 7
    assert s["lost"]["next"] == 1 and s["lost"]["unsure"] == 1
    assert any("state.json missing or damaged: using its previous copy" in x for x in out)


def test_resume_renumbers_the_unsent_records_and_survives_a_reboot(tmp_path):
    out = mp_lines(tmp_path, SHOW + """
import os
j = Journal(); j.load()
for i in range(3):
    j.append(100 + i, 1, 1, {1: i})      # given seqs 1..3 by a counter that was lost
show(j, "before")
j.close()
j = Journal(); j.load()                  # a reboot before the gateway answered: still unsure
show(j, "reboot")
j.resume(42)                             # the gateway holds seqs up to 41
show(j, "resumed")
j.resume(42)                             # the same answer again (a repeated HELLO)
j.ack(41)
show(j, "again")
j.append(103, 1, 1, {1: 3})
j.close()
j = Journal(); j.load()
show(j, "rebooted")
""")
    s = shown(out)
    assert s["before"]["seqs"] == [1, 2, 3] and s["before"]["unsure"] == 1
    assert s["reboot"]["unsure"] == 1
    assert s["resumed"] == {"tag": "resumed", "first": 42, "next": 45, "count": 3, "acked": 41,
                            "unsure": 0, "seqs": [42, 43, 44], "t": [100, 101, 102]}
    assert s["again"]["seqs"] == [42, 43, 44] and s["again"]["next"] == 45
    assert s["rebooted"]["seqs"] == [42, 43, 44, 45] and s["rebooted"]["unsure"] == 0


def test_resume_with_an_empty_journal_jumps_and_persists(tmp_path):
    out = mp_lines(tmp_path, SHOW + """
j = Journal(); j.load()
j.resume(100)
show(j, "resumed")
j.close()
j = Journal(); j.load()
j.append(1, 1, 1, {1: 1})
show(j, "rebooted")
""")
    s = shown(out)
    assert (s["resumed"]["first"], s["resumed"]["next"], s["resumed"]["unsure"]) == (100, 100, 0)
    assert s["rebooted"]["seqs"] == [100] and s["rebooted"]["unsure"] == 0


CUTS = r"""
import vfs, os
from vboard.blockdev import PowerCut, PowerLost, RamBlockDev
from roadside_node import seqguard  # imported before / changes under the test's feet

ram = RamBlockDev(24)
vfs.VfsLfs2.mkfs(ram)

def mount(dev):
    fs = vfs.VfsLfs2(dev)
    vfs.mount(fs, "/flash")
    os.chdir("/flash")

def umount():
    os.chdir("/")
    vfs.umount("/flash")

def held(j):
    return [cbor.loads(j.read(s)) for s in range(j.first, j.next_seq)]

mount(ram)
j = Journal(); j.load()
for i in range(3):
    j.append(100 + i, 1, 1, {1: i})      # numbered by a lost counter: unsure from 1
j.close()
umount()
image = bytes(ram.data)

def sweep(step):
    results = []
    cut = 0
    while True:
        cut += 1
        for keep in (0, 1000):
            ram.data[:] = image
            dev = PowerCut(ram)
            mount(dev)
            j = Journal(); j.load(boot=False)
            dev.cut_at = dev.writes + cut
            dev.keep = keep
            done = False
            try:
                step(j)
                done = True
            except (PowerLost, OSError):
                pass
            try:
                umount()
            except Exception:
                vfs.umount("/flash")
            mount(ram)                       # power back: boot
            j = Journal(); j.load()
            recs = held(j)
            results.append([cut, keep, done, [r[0] for r in recs], [r[1] for r in recs],
                            j.next_seq, j.unsure])
            j.close()
            umount()
            if done:
                return results
"""


def test_power_cut_at_every_write_of_a_resume_loses_and_reuses_nothing(tmp_path):
    out = mp_lines(tmp_path, CUTS + """
res = sweep(lambda j: j.resume(42))
print(json.dumps(res))
""", heapsize="1m")
    results = json.loads(out[-1])
    assert len(results) >= 10 and results[-1][2], results      # cut at every write, then done
    for cut, keep, _done, seqs, ts, next_seq, unsure in results:
        what = f"cut at write {cut} (keep {keep}): {seqs} next {next_seq} unsure {unsure}"
        assert ts == [100, 101, 102], what                      # every record, once, in order
        assert seqs in ([1, 2, 3], [42, 43, 44]), what          # one numbering or the other
        assert next_seq == seqs[-1] + 1, what
        if seqs == [1, 2, 3]:
            assert unsure == 1, what      # still asks the gateway before sending anything


def test_power_cut_at_every_write_of_a_state_save_keeps_the_counter(tmp_path):
    out = mp_lines(tmp_path, CUTS + """
def step(j):
    j.confirm()
    j.mark_sent(3)
    j.ack(3)          # all acked: a save, then the journal compacted to nothing
res = sweep(step)
print(json.dumps(res))
""", heapsize="1m")
    results = json.loads(out[-1])
    assert len(results) >= 6 and results[-1][2], results
    for cut, keep, done, seqs, _ts, next_seq, unsure in results:
        what = f"cut at write {cut} (keep {keep}): {seqs} next {next_seq} unsure {unsure}"
        assert next_seq >= 4, what                               # never a seq given again
        assert seqs in ([1, 2, 3], []), what                     # held, or acked and gone
        if done:
            assert (seqs, unsure) == ([], 0), what
