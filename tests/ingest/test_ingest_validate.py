"""The ingest side's fast batch check (tools/ingest/validate.py) against the CDDL itself: zcbor
(the reference receiver's validator) and the fast check give the same verdict on valid batches
and on every way of breaking one, and the fast check is much faster."""

from __future__ import annotations

import copy
import time

import cbor2
import pytest
from roadside.tools.errors import SchemaError
from roadside.tools.ingest.validate import BadBatch, check_batch, parse
from roadside.tools.sim.cddl import Schema


@pytest.fixture(scope="module")
def schema() -> Schema:
    return Schema.from_file()


def record(node: str = "wl-1", seq: int = 1, **over) -> dict:
    r = {"node": node, "seq": seq, "t": 1_700_000_000, "kind": "level", "role": "water",
         "synced": True, "priority": False,
         "data": {"level_cm": 12.5, "rate_cm_per_min": -0.5, "distance_mm": 1875,
                  "state": "ok", "wet": True}}
    r.update(over)
    return r


def batch(records: list[dict] | None = None, **over) -> dict:
    b = {"batch": "b-1", "gateway": "gw-1", "site": "s", "created": 1_700_000_000,
         "records": [record(seq=s) for s in range(1, 4)] if records is None else records}
    b.update(over)
    return b


def zcbor_ok(schema: Schema, obj) -> bool:
    try:
        schema.validate(copy.deepcopy(obj), "uplink-batch")
        return True
    except SchemaError:
        return False


def fast_ok(obj) -> bool:
    try:
        check_batch(obj)
        return True
    except BadBatch:
        return False


def broken() -> list[tuple[str, object]]:
    """One batch per way of breaking the rule (and a few that stay valid)."""
    cases: list[tuple[str, object]] = [("valid", batch()), ("no records", batch([])),
                                       ("empty data", batch([record(data={})])),
                                       ("float data", batch([record(data={"x": 1e300})])),
                                       ("not a map", [1, 2]), ("text", "batch")]
    for key in ("batch", "gateway", "site", "created", "records"):
        b = batch()
        del b[key]
        cases.append((f"no {key}", b))
    for key, bad in (("batch", 1), ("gateway", b"gw"), ("site", None), ("created", -1),
                     ("created", 1.5), ("created", "now"), ("records", {}),
                     ("records", "x")):
        cases.append((f"{key}={bad!r}", batch(**{key: bad})))
    cases.append(("extra batch key", {**batch(), "extra": 1}))
    for key in ("node", "seq", "t", "kind", "role", "synced", "priority", "data"):
        r = record()
        del r[key]
        cases.append((f"record without {key}", batch([r])))
    for key, bad in (("node", 7), ("seq", -1), ("seq", "1"), ("seq", True), ("t", 1.0),
                     ("kind", None), ("role", 3), ("synced", 1), ("priority", "no"),
                     ("data", []), ("data", {1: 2}), ("data", {"x": None}),
                     ("data", {"x": [1]}), ("data", {"x": {"y": 1}}), ("data", {"x": b"\0"})):
        cases.append((f"record {key}={bad!r}", batch([record(**{key: bad})])))
    cases.append(("extra record key", batch([{**record(), "extra": 1}])))
    cases.append(("record not a map", batch([[1, 2]])))
    return cases


@pytest.mark.parametrize("name,obj", broken(), ids=[n for n, _ in broken()])
def test_same_verdict_as_the_cddl(schema, name, obj):
    assert fast_ok(obj) == zcbor_ok(schema, obj), name


def test_parse_checks_key_and_seq_order_with_one_line():
    body = cbor2.dumps(batch())
    assert parse(body, "b-1")["batch"] == "b-1"
    with pytest.raises(BadBatch, match="differs from the batch id"):
        parse(body, "other")
    with pytest.raises(BadBatch, match="seq 1 is not after seq 2"):
        parse(cbor2.dumps(batch([record(seq=2), record(seq=1)])), None)
    with pytest.raises(BadBatch, match="not one CBOR item"):
        parse(b"\xff\x00", None)
    with pytest.raises(BadBatch, match=r"records\[0\]: missing seq") as err:
        check_batch(batch([{k: v for k, v in record().items() if k != "seq"}]))
    assert "\n" not in str(err.value)


def test_fast_check_is_over_fifty_times_the_cddl_validator(schema):
    """docs/PERFORMANCE.md quotes both rates (printed with -s)."""
    b = batch([record(node=f"wl-{i % 50}", seq=1 + i // 50) for i in range(500)])
    body = cbor2.dumps(b)
    t0 = time.perf_counter()
    schema.validate(cbor2.loads(body), "uplink-batch")
    zcbor_rate = 500 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(20):
        parse(body, "b-1")
    fast_rate = 20 * 500 / (time.perf_counter() - t0)
    print(f"records/s: zcbor {zcbor_rate:,.0f}, fast (cbor2 decode + checks) {fast_rate:,.0f}")
    assert fast_rate > 50 * zcbor_rate
