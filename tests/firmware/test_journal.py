"""The journal on the node's flash: persistence across processes, torn tails, the full policy,
seqs never reused, and state.json never ahead of the journal."""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import time

from support.micropython import ESP32_HEAP, FIRMWARE, MICROPYTHON, run_stdout

PRELUDE = r"""
import json
from roadside_node.journal import Journal
def show(j):
    print(json.dumps({"first": j.first_unacked, "next": j.next_seq, "count": j.count,
                      "used": j.used, "dropped": j.dropped_full, "boots": j.boot_count}))
"""


def mp(tmp_path, code: str) -> dict:
    return json.loads(run_stdout(PRELUDE + code, cwd=tmp_path).splitlines()[-1])


def state(tmp_path) -> dict:
    """The node's saved state as its journal reads it: state.json, or when a kill landed
    between the save's two renames, the whole new copy still in state.json.tmp."""
    path = tmp_path / "state.json"
    if not path.exists():
        path = tmp_path / "state.json.tmp"
    return json.loads(path.read_text())


def entry_sizes(path) -> list[int]:
    """The size of each entry of journal.bin ([len u16 LE][crc32 u32 LE][record]), in order."""
    data, sizes, i = path.read_bytes(), [], 0
    while i < len(data):
        n = 6 + struct.unpack_from("<H", data, i)[0]
        sizes.append(n)
        i += n
    assert i == len(data), "a torn entry at the end"
    return sizes


def test_append_ack_reboot_persistence(tmp_path):
    s = mp(tmp_path, """
j = Journal(); j.load()
for i in range(10):
    j.append(100 + i, 1, 1, {1: 1.5 * i, 2: 0.0, 3: 2000 + i})
j.mark_sent(6)
j.ack(4)
show(j)
""")
    sizes = entry_sizes(tmp_path / "journal.bin")
    assert len(sizes) == 10     # 4 acked bytes are far below the compaction threshold
    # `used` counts the 6 unacked entries (seqs 5..10), not the file
    assert s == {"first": 5, "next": 11, "count": 6, "used": sum(sizes[4:]), "dropped": 0,
                 "boots": 1}
    assert state(tmp_path)["next_seq"] == 7 and state(tmp_path)["acked"] == 4
    s = mp(tmp_path, """
j = Journal(); j.load()
r = j.read(5)
from roadside_node import cbor
print(json.dumps(cbor.loads(r)))
show(j)
""")
    assert s["first"] == 5 and s["next"] == 11 and s["count"] == 6 and s["boots"] == 2
    out = run_stdout(PRELUDE + "j = Journal(); j.load()\nfrom roadside_node import cbor\n"
                     "print(json.dumps(cbor.loads(j.read(5))))", cwd=tmp_path)
    assert json.loads(out.splitlines()[0]) == [5, 104, 1, 1, {"1": 6.0, "2": 0.0, "3": 2004}]


def test_torn_tail_is_cut_and_the_rest_kept(tmp_path):
    mp(tmp_path, """
j = Journal(); j.load()
for i in range(5):
    j.append(i, 1, 1, {1: 2.0})
j.mark_sent(3)
show(j)
""")
    path = tmp_path / "journal.bin"
    data = path.read_bytes()
    path.write_bytes(data[:-3])                     # power cut in the middle of record 5
    s = mp(tmp_path, "j = Journal(); j.load()\nshow(j)\nj.append(9, 1, 1, {1: 3.0})\nshow(j)")
    assert s["count"] == 5 and s["next"] == 6       # 4 kept + the new one as seq 5
    (tmp_path / "journal.bin").write_bytes(path.read_bytes() + b"\x09\x00garbage")
    s = mp(tmp_path, "j = Journal(); j.load()\nshow(j)")
    assert s["count"] == 5 and s["next"] == 6


def test_full_policy_refuses_telemetry_keeps_a_priority_reserve(tmp_path):
    s = mp(tmp_path, """
j = Journal(max_bytes=1024); j.load()
n = 0
while j.append(5, 1, 1, {1: 12.5, 2: 0.5, 3: 2000}):
    n += 1
tele_used = j.used
print(json.dumps({"n": n, "used": tele_used, "dropped": j.dropped_full}))
p = 0
while j.append(5, 2, 2, {1: "alarm", 2: 150.5, 3: "alert"}):
    p += 1
print(json.dumps({"p": p, "used": j.used}))
show(j)
""")
    out = run_stdout(PRELUDE + """
j = Journal(max_bytes=1024); j.load()
show(j)
""", cwd=tmp_path)
    s = json.loads(out)
    assert s["dropped"] == 2 and s["count"] > 0     # one telemetry + one priority refused
    assert s["used"] <= 1024 * 1.25
    assert state(tmp_path)["dropped_full"] == 2


def test_counts_of_full_policy(tmp_path):
    lines = run_stdout(PRELUDE + """
j = Journal(max_bytes=1024); j.load()
n = 0
while j.append(5, 1, 1, {1: 12.5, 2: 0.5, 3: 2000}):
    n += 1
print(n, j.used, j.dropped_full)
print(j.append(5, 1, 0, {1: 1}), j.dropped_full)
p = 0
while j.append(5, 2, 2, {1: "alarm", 2: 150.5, 3: "alert"}):
    p += 1
print(p, j.used, j.dropped_full)
j.ack(j.first + 2)
print(j.append(5, 1, 1, {1: 12.5, 2: 0.5, 3: 2000}) > 0)
""", cwd=tmp_path).split("\n")
    n, used, dropped = map(int, lines[0].split())
    assert n > 10 and used <= 1024 and dropped == 1
    assert lines[1].split() == ["0", "2"]
    p, used, dropped = map(int, lines[2].split())
    assert p >= 1 and 1024 < used <= 1280 and dropped == 3
    assert lines[3] == "False"  # still above 1024 after acking 3: telemetry still refused


def test_seq_never_reused_across_restarts(tmp_path):
    for _ in range(3):
        run_stdout(PRELUDE + """
j = Journal(); j.load()
for i in range(4):
    j.append(1, 1, 1, {1: 1.0})
j.mark_sent(j.next_seq - 1)
j.ack(j.next_seq - 1)   # everything acked: the journal file ends up empty
""", cwd=tmp_path)
    s = mp(tmp_path, "j = Journal(); j.load()\nshow(j)")
    assert s["next"] == 13 and s["count"] == 0 and s["first"] == 13
    assert (tmp_path / "journal.bin").stat().st_size == 0


def test_kill_9_while_appending_keeps_state_behind_the_journal(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(FIRMWARE)!r})\n" + PRELUDE + """
j = Journal(max_bytes=1000000); j.load()
n = 0
while True:
    s = j.append(1, 1, 1, {1: 1.0, 2: 0.0, 3: 1})
    j.mark_sent(s)
    if s % 7 == 0:
        j.ack(s - 3)
    n += 1
    if n == RUNNING_AT:
        print("running")    # several compactions behind it; the kill lands in what follows
""")
    for running_at in (300, 500, 700):
        p = subprocess.Popen([str(MICROPYTHON), "-X", f"heapsize={ESP32_HEAP}", "-c",
                              f"RUNNING_AT = {running_at}\nexec(open('writer.py').read())"],
                             cwd=tmp_path, stdout=subprocess.PIPE)
        try:
            # the writer's own word that it has appended that many records, not a sleep
            assert p.stdout is not None
            deadline, ready = time.monotonic() + 30, False
            while not ready and time.monotonic() < deadline:
                ready = bool(select.select([p.stdout], [], [], 0.5)[0])
            line = p.stdout.readline() if ready else b""
            assert line == b"running\n", f"the writer stopped or hung ({p.poll()}): {line!r}"
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            p.stdout.close()
        st = state(tmp_path)
        s = mp(tmp_path, "j = Journal(); j.load()\nshow(j)")
        # every seq the state counts as produced is either acked or still journaled
        assert st["next_seq"] - 1 <= s["next"] - 1
        assert s["first"] == st["acked"] + 1 and s["count"] == s["next"] - s["first"]
        lines = run_stdout(PRELUDE + """
from roadside_node import cbor
j = Journal(); j.load()
print(all(cbor.loads(j.read(s))[0] == s for s in range(j.first, j.next_seq)))
""", cwd=tmp_path)
        assert lines.strip() == "True"


def test_a_long_backlog_drains_without_copying_the_offsets(tmp_path):
    """ACKs and compactions reuse the one offset array (a copy per ACK of a 2,000-record
    backlog ended in MemoryError in a 112k heap), and the records read back right throughout."""
    out = run_stdout(PRELUDE + """
import gc
from roadside_node import cbor
j = Journal(max_bytes=200000); j.load()
for i in range(2500):
    j.append(i, 1, 1, {1: 1.5, 2: 0.0, 3: i})
arr = j.offs
gc.collect()
before = gc.mem_alloc()
ok = True
for upto in range(3, 2501, 3):
    j.ack(upto)
    if j.count and cbor.loads(j.read(upto + 1))[4][3] != upto:
        ok = False
j.ack(2500)
gc.collect()
print(json.dumps({"same": j.offs is arr, "ok": ok, "count": j.count, "used": j.used,
                  "grew": gc.mem_alloc() - before}))
""", cwd=tmp_path, heapsize="112k")
    r = json.loads(out.splitlines()[-1])
    assert r["same"] and r["ok"] and r["count"] == 0 and r["used"] == 0
    assert r["grew"] < 2048, r   # nothing per record left behind
    assert (tmp_path / "journal.bin").stat().st_size == 0   # compacted away
