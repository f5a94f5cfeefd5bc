"""The toll beacon under MicroPython (small heap, precompiled firmware): the peak gantry
scenario's reads (hw/sim_toll.py, the line protocol of docs/READER.md) into roles/toll.py
with a real journal: one transaction per passage, none lost or doubled, with close vehicles
and double antenna reads; journaled before the acknowledgement; a lost acknowledgement or a
crash does not charge twice; bad lines, reader faults and silence."""

from __future__ import annotations

import binascii
import json
import struct
from pathlib import Path

import cbor2
import pytest
from support.mpy import build, run_driver

PEAK = Path(__file__).resolve().parents[2] / "scenarios" / "toll" / "peak.json"

COMMON = r"""
import json
from roadside_node.config import Config
from roadside_node.journal import Journal
from roadside_node.roles.toll import TollRole, line
ARGS = json.loads(%r)
journal = Journal(max_bytes=ARGS.get("journal_max_bytes", 32768))
journal.load()


def emit(kind, flags, body):
    return journal.append(0, kind, flags, body)  # the test reads them from journal.bin


class HW:
    now = 0

    def reader_read(self):
        return reader.read(self.now) if reader else b""

    def reader_write(self, data):
        # the transaction must already be in the journal when the reader hears the ack
        print("ack", data.decode().strip(), journal.next_seq - 1)
        if reader:
            reader.write(data)
"""

PEAK_DRIVER = COMMON.replace("from roadside_node.config import Config\n", "") + r"""
from roadside_node.hw.sim_toll import SimReader


class Config:
    # config.py's defaults for the toll keys: its 11 KiB of code do not fit next to the
    # scenario in the small unix-port heap (on a board the code runs from flash)
    def __init__(self, data):
        self.data = {"window_ms": 1000, "antenna_lanes": None, "reader_silent_ms": 5000}
        self.data.update(data)

    def get(self, key):
        return self.data.get(key)


reader = None
hw = HW()
role = TollRole(Config(ARGS["config"]), emit, hw, journal)   # early, as the App does
scen = json.load(open(ARGS["scenario"]))
scen["loop_ms"] = 0
reader = SimReader(scen, 7)
del scen
import gc
for now in range(0, ARGS["end_ms"], ARGS["step_ms"]):
    hw.now = now
    role.step(now / 1000)
    if now %% 4000 == 0:
        gc.collect()  # as the main loop does every 50 turns
gc.collect()
print(json.dumps(["end", reader.reads, reader.acks, len(reader.unacked), role.dups, role.bad,
                  len(role.open), gc.mem_free()]))
"""

SCRIPT_DRIVER = COMMON + r"""
def emit(kind, flags, body):
    seq = journal.append(0, kind, flags, body)
    if seq:
        print(json.dumps(["rec", seq, kind, flags, body]))
    return seq


reader = None
hw = HW()
role = TollRole(Config(ARGS["config"]), emit, hw, journal)
for item in open("script.jsonl"):   # streamed: the whole script would not fit beside
    item = json.loads(item)
    if item == "crash":   # power cut: a new journal and role from what is on flash
        journal = Journal(max_bytes=ARGS.get("journal_max_bytes", 32768))
        journal.load()
        role = TollRole(Config(ARGS["config"]), emit, hw, journal)
        continue
    if item[0] == "intent":   # a crash between the intent line and the journal append
        with open("toll_acks.txt", "a") as f:
            f.write("%%d,%%s,%%d\n" %% (journal.next_seq, item[1], item[2]))
        continue
    if item == "gateway_acks":   # the gateway stored everything: the journal has room again
        journal.ack(journal.next_seq - 1)
        continue
    now, text = item
    hw.now = now
    data = text.encode()
    if text.startswith("R,") or text.startswith("H,"):
        data = line(data)
    role.feed(data, now)
    role.step(now / 1000)
print(json.dumps(["end", role.reads, role.dups, role.bad, role.transactions, len(role.open),
                  role.refused]))
"""


@pytest.fixture(scope="module")
def mpy(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("mpy"))


def journaled(path: Path) -> list:
    """["rec", seq, kind, flags, body] for each record in journal.bin ([len][crc][cbor])."""
    data = path.read_bytes() if path.exists() else b""
    out, off = [], 0
    while off + 6 <= len(data):
        n, crc = struct.unpack_from("<HI", data, off)
        rec = data[off + 6:off + 6 + n]
        assert binascii.crc32(rec) == crc
        seq, _t, kind, flags, body = cbor2.loads(rec)
        out.append(["rec", seq, kind, flags, {str(k): v for k, v in body.items()}])
        off += 6 + n
    return out


def run(mpy: Path, driver: str, cwd: Path, **args) -> list:
    args.setdefault("config", {})
    if "script" in args:
        cwd.mkdir(parents=True, exist_ok=True)
        (cwd / "script.jsonl").write_text("".join(json.dumps(i) + "\n"
                                                  for i in args.pop("script")))
    out = run_driver(driver % json.dumps(args), mpy, cwd)
    lines = []
    for line in out.splitlines():
        if line.startswith("ack "):
            _, text, upto = line.split()
            lines.append(["ack", text, int(upto)])
        else:
            lines.append(json.loads(line))
    if driver is PEAK_DRIVER:   # it does not print records (see journaled)
        return journaled(cwd / "journal.bin") + lines
    return lines


def transactions(out: list) -> list[dict]:
    return [r[4] for r in out if r[0] == "rec" and r[2] == 20]


def test_peak_one_transaction_per_passage_none_lost_or_doubled(mpy, tmp_path):
    scen = json.loads(PEAK.read_text())
    # the same scenario without its prose: in the small heap the JSON text is what weighs
    lean = tmp_path / "peak.json"
    lean.write_text(json.dumps({k: v for k, v in scen.items() if k != "description"} | {
        "vehicles": [{k: v for k, v in veh.items() if k != "note"}
                     for veh in scen["vehicles"]]}))
    out = run(mpy, PEAK_DRIVER, tmp_path, scenario=str(lean), end_ms=32_000, step_ms=400)
    txns = transactions(out)
    vehicles = {v["tag"]: v for v in scen["vehicles"]}
    assert len(vehicles) == len(scen["vehicles"]) == 24
    assert sorted(t["1"] for t in txns) == sorted(vehicles)      # each passage exactly once
    for t in txns:
        v = vehicles[t["1"]]
        dwell = int(6.0 / (v["kmh"] / 3.6) * 1000)
        assert t["2"] == v["lane"]                                # best RSSI: its own lane
        assert v["at_ms"] <= t["3"] <= t["4"] < v["at_ms"] + dwell
        assert t["5"] >= 3 and -72 <= t["6"] <= -40
        want_ants = (1 << (v["lane"] - 1)) | ((1 << (v["cross"] - 1)) if "cross" in v else 0)
        assert t["7"] == want_ants, v                           # seen by two antennas
    # the three close pairs: same lane, 250 ms apart, two transactions each
    close = [v for v in scen["vehicles"] if "250 ms behind" in v.get("note", "")]
    assert len(close) == 3 and all(v["tag"] in {t["1"] for t in txns} for v in close)
    recs = [r for r in out if r[0] == "rec" and r[2] == 20]
    assert all(r[3] == 2 for r in recs)                          # PRIORITY
    assert [r[1] for r in recs] == sorted(r[1] for r in recs)
    end = out[-1]
    reads, acks, unacked, dups, bad, still_open, free = end[1:]
    assert sum(t["5"] for t in txns) == reads                    # every read in one passage
    assert (acks, unacked, dups, bad, still_open) == (24, 0, 0, 0, 0)
    acks_seen = [r for r in out if r[0] == "ack"]
    by_tag = {r[4]["1"]: r[1] for r in recs}
    for _, text, journaled_upto in acks_seen:                  # ack only after the journal
        tag = text.split(",")[1]
        assert by_tag[tag] <= journaled_upto
    assert free > 4096, free


def rd(rseq: int, tag: str, ant: int, rssi: int, ms: int) -> list:
    return [ms, f"R,{rseq},{tag},{ant},{rssi},{ms}"]


def hb(ms: int, status: str = "OK") -> list:
    return [ms, f"H,{ms},{status}"]


TAG_A = "E20034120000A1B2C3000101"
TAG_B = "E20034120000A1B2C3000102"


def passage(tag: str, first_rseq: int, start: int, n: int = 5, ant: int = 2) -> list:
    return [rd(first_rseq + i, tag, ant, -60 + i, start + 20 * i) for i in range(n)]


def test_window_splits_passages_only_after_window_ms_unseen(mpy, tmp_path):
    script = (passage(TAG_A, 1, 1000) + [hb(1500)] + passage(TAG_A, 6, 2000)   # 900 ms gap
              + [hb(3000), hb(3500)] + passage(TAG_A, 11, 3700) + [hb(4900)])
    out = run(mpy, SCRIPT_DRIVER, tmp_path, script=script)
    txns = transactions(out)
    assert [(t["3"], t["4"], t["5"], t["8"]) for t in txns] == [(1000, 2080, 10, 10),
                                                              (3700, 3780, 5, 15)]
    acks = [r[1] for r in out if r[0] == "ack"]
    assert acks == [f"$A,{TAG_A},10*{_cs(f'A,{TAG_A},10')}",
                    f"$A,{TAG_A},15*{_cs(f'A,{TAG_A},15')}"]


def _cs(body: str) -> str:
    c = 0
    for b in body.encode():
        c ^= b
    return f"{c:02X}"


def test_resent_reads_after_a_lost_ack_or_a_crash_are_not_charged_twice(mpy, tmp_path):
    script = (passage(TAG_A, 1, 1000) + passage(TAG_B, 6, 1050, ant=3) + [hb(2500)]
              # the reader did not get the acks: it sends both bursts again, then a crash
              + passage(TAG_A, 1, 1000) + ["crash"] + passage(TAG_B, 6, 1050, ant=3)
              + [hb(3000), hb(5000)])
    out = run(mpy, SCRIPT_DRIVER, tmp_path, script=script)
    assert sorted(t["1"] for t in transactions(out)) == [TAG_A, TAG_B]
    assert out[-1] == ["end", 0, 5, 0, 0, 0, 0]     # after the crash: 5 duplicates, no reads


def test_a_crash_before_the_journal_write_loses_nothing(mpy, tmp_path):
    # the intent line is written, then the power goes before the journal append: on boot
    # that intent is dropped and the resent burst becomes the transaction
    script = [["intent", TAG_A, 5], "crash"] + passage(TAG_A, 1, 1000) + [hb(2500)]
    out = run(mpy, SCRIPT_DRIVER, tmp_path, script=script)
    assert [t["1"] for t in transactions(out)] == [TAG_A]


def test_bad_lines_reader_fault_and_silence(mpy, tmp_path):
    script = ([hb(0)] + [[100, "$R,1,E2,1,-50,100*00\r\n"], [110, "garbage\r\n"],
                         [120, "$X,1*59\r\n"]]
              + passage(TAG_A, 2, 200) + [hb(1500, "FAULT-ANT3-VSWR"), hb(2000),
                                          [9000, ""]])
    out = run(mpy, SCRIPT_DRIVER, tmp_path, script=script,
              config={"reader_silent_ms": 5000})
    status = [(r[3], r[4]["1"], r[4]["3"], r[4]["5"]) for r in out
              if r[0] == "rec" and r[2] == 21]
    assert status == [(0, "ok", 0, ""), (2, "fault", 3, "FAULT-ANT3-VSWR"), (0, "ok", 3, ""),
                      (2, "silent", 3, "no heartbeat for 7000 ms")]
    assert len(transactions(out)) == 1


def test_a_full_journal_holds_the_passage_and_its_ack_until_there_is_room(mpy, tmp_path):
    tags = [f"E20034120000A1B2C30002{i:02X}" for i in range(12)]
    script = [hb(0)]
    for i, tag in enumerate(tags):
        script += passage(tag, 1 + 5 * i, 1000 + 100 * i)
    script += [hb(3500), "gateway_acks", hb(4000), hb(5000)]
    out = run(mpy, SCRIPT_DRIVER, tmp_path, script=script, journal_max_bytes=400)
    txns = transactions(out)
    assert sorted(t["1"] for t in txns) == tags                 # late, but none lost
    assert all(t["4"] == t["3"] + 80 for t in txns)             # exit time: the last read
    refused = out[-1][6]
    assert refused > 0, out
    seqs = {r[4]["1"]: r[1] for r in out if r[0] == "rec" and r[2] == 20}
    acks = [r for r in out if r[0] == "ack"]
    assert len(acks) == 12
    for _, text, journaled_upto in acks:                       # never acked before journaled
        assert seqs[text.split(",")[1]] <= journaled_upto
