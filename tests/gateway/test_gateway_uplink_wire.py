"""The uplink wire format (gateway/uplink_wire.py) is the bytes cbor2 gives for the dicts."""

import cbor2
from roadside.gateway import protocol as p
from roadside.gateway import uplink_wire as w


def test_record_maps_are_cbor2_of_the_dict():
    enc = w.RecordEncoder()
    records = [p.Record(7, 1_795_420_800, p.KIND_LEVEL, 0, {3: 1200, 1: 12.5}),
               p.Record(8, 1, p.KIND_ALARM, p.FLAG_PRIORITY | p.FLAG_CLOCK_UNSYNCED,
                        {1: "alert", 3: "normal"}),
               p.Record(9, 5, 250, 0, {2: [1, 2], 1: -3})]       # an unknown kind and keys
    got = enc.records("wl-0001", "water", records, 7, 1_795_500_000.5)
    assert [seq for seq, *_ in got] == [8, 9]                   # at or below `after`: skipped
    for (seq, flags, length, rec), r in zip(got, records[1:], strict=True):
        data = p.body_to_data(r.kind, r.body)
        want = {"node": "wl-0001", "seq": r.seq,
                "t": 1_795_500_000 if r.flags & p.FLAG_CLOCK_UNSYNCED else r.t,
                "kind": p.kind_name(r.kind), "role": "water", "synced": r.synced,
                "priority": r.priority, "data": data}
        assert rec == cbor2.dumps(want) and flags == r.flags
        assert length == len(cbor2.dumps(data))
        assert cbor2.loads(rec) == want
        # The same map from its fields (the migration's way).
        assert enc.record("wl-0001", seq, want["t"], r.kind, "water", r.synced, r.priority,
                          cbor2.dumps(data)) == rec


def test_batch_body_is_cbor2_of_the_batch():
    recs = [cbor2.dumps({"seq": i}) for i in range(30)]          # 30: a two-byte array head
    head = w.batch_head("b-1", "gw", "site", 1_795_420_800)
    body = w.batch_body(head, recs)
    assert body == cbor2.dumps({"batch": "b-1", "gateway": "gw", "site": "site",
                                "created": 1_795_420_800,
                                "records": [{"seq": i} for i in range(30)]})
    assert len(body) <= w.batch_size(head) + sum(map(len, recs))


def test_uint_heads_are_shortest():
    for n in (0, 23, 24, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32):
        assert w.uint_head(0, n) == cbor2.dumps(n)               # major 0: the integer itself
