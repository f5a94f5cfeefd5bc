"""The reference receiver, as a real process on a free loopback port."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request

import cbor2
from roadside.tools.sim import procs
from roadside.tools.sim.receiver_store import read_seqs
from support.batches import post


def record(node: str, seq: int, **over) -> dict:
    r = {"node": node, "seq": seq, "t": 1_700_000_000, "kind": "level", "role": "water",
         "synced": True, "priority": False,
         "data": {"level_cm": 12.5, "rate_cm_per_min": 0.0, "distance_mm": 1875}}
    r.update(over)
    return r


def batch(bid: str, records: list[dict]) -> dict:
    return {"batch": bid, "gateway": "gw-1", "site": "test", "created": 1_700_000_000,
            "records": records}


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/stats", timeout=10) as resp:
        return json.load(resp)


def test_stores_a_batch_and_reports_stats(start_receiver):
    r = start_receiver()
    b = batch("b-1", [record("wl-0001", 1), record("wl-0002", 1), record("wl-0001", 2)])
    status, _ = post(r.url, cbor2.dumps(b), key="b-1")
    assert status == 200
    s = stats(r.url)
    assert (s["batches"], s["records"], s["duplicate_batches"]) == (1, 3, 0)
    assert s["nodes"]["wl-0001"] == {"records": 2, "max_seq": 2, "gaps": 0}
    assert read_seqs(r.db) == {"wl-0001": [1, 2], "wl-0002": [1]}
    row = sqlite3.connect(r.db).execute(
        "SELECT kind, role, synced, data FROM records WHERE node='wl-0002'").fetchone()
    assert row[:3] == ("level", "water", 1) and json.loads(row[3])["distance_mm"] == 1875


def test_same_batch_twice_is_stored_once(start_receiver):
    r = start_receiver()
    body = cbor2.dumps(batch("b-7", [record("wl-0001", 1), record("wl-0001", 2)]))
    assert post(r.url, body, key="b-7")[0] == 200
    status, text = post(r.url, body, key="b-7")
    assert status == 200 and json.loads(text)["duplicate_batch"] is True
    s = stats(r.url)
    assert (s["batches"], s["records"], s["duplicate_batches"]) == (1, 2, 1)


def test_record_in_two_batches_is_stored_once_and_counted(start_receiver):
    r = start_receiver()
    assert post(r.url, cbor2.dumps(batch("a", [record("n", 1), record("n", 2)])))[0] == 200
    assert post(r.url, cbor2.dumps(batch("b", [record("n", 2), record("n", 4)])))[0] == 200
    s = stats(r.url)
    assert s["records"] == 3 and s["duplicate_records"] == 1
    assert s["nodes"]["n"] == {"records": 3, "max_seq": 4, "gaps": 1}


def test_keys_in_any_order_are_accepted(start_receiver):
    r = start_receiver()
    rec = dict(reversed(list(record("n", 1).items())))
    b = dict(reversed(list(batch("x", [rec]).items())))
    assert post(r.url, cbor2.dumps(b))[0] == 200


def test_bad_requests_get_one_line_reasons_and_store_nothing(start_receiver):
    r = start_receiver()
    good = batch("g", [record("n", 1)])
    cases = [
        (b"\xff\x00garbage", "application/cbor", None, 400, "not one CBOR item"),
        (cbor2.dumps([1, 2]), "application/cbor", None, 400, "must be a map"),
        (cbor2.dumps(batch("g", [record("n", "1")])), "application/cbor", None, 400, "seq"),
        (cbor2.dumps(batch("g", [record("n", -3)])), "application/cbor", None, 400, "unsigned"),
        (cbor2.dumps({k: v for k, v in good.items() if k != "site"}), "application/cbor", None,
         400, "missing the key 'site'"),
        (cbor2.dumps(batch("g", [record("n", 2), record("n", 1)])), "application/cbor", None,
         400, "seq order"),
        (cbor2.dumps(good), "application/cbor", "other-key", 400, "Idempotency-Key"),
        (cbor2.dumps(good), "application/json", None, 415, "application/cbor"),
    ]
    for body, ctype, key, want_status, want_text in cases:
        status, text = post(r.url, body, ctype, key)
        assert status == want_status, (want_text, text)
        assert want_text in text and text.count("\n") == 1, text
    assert stats(r.url)["records"] == 0


def test_fail_rate_answers_503_before_storing(start_receiver):
    r = start_receiver(fail_rate=0.5, fail_seed=3)
    statuses = [post(r.url, cbor2.dumps(batch(f"b{i}", [record("n", i + 1)])))[0]
                for i in range(40)]
    ok = statuses.count(200)
    assert set(statuses) == {200, 503} and 8 <= ok <= 32
    s = stats(r.url)
    assert s["records"] == ok and s["batches"] == ok and s["failed_on_purpose"] == 40 - ok


def test_data_survives_a_restart(start_receiver):
    r = start_receiver()
    assert post(r.url, cbor2.dumps(batch("keep", [record("n", 1)])))[0] == 200
    procs.stop(r.proc)
    again = start_receiver(db=r.db)
    status, text = post(again.url, cbor2.dumps(batch("keep", [record("n", 1)])))
    assert status == 200 and json.loads(text)["duplicate_batch"] is True
    assert stats(again.url)["records"] == 1


def test_bad_arguments_are_one_line_errors(tmp_path):
    cmd = [sys.executable, "-m", "roadside.tools.cli", "receiver", "--db", str(tmp_path / "x"),
           "--listen", "127.0.0.1:0", "--fail-rate", "1.5"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--fail-rate" in p.stderr and p.stderr.count("\n") == 1
