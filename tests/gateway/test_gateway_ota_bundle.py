"""What the gateway checks of a bundle before offering it (gateway/ota/bundle.py, on
gateway/ota_bundle.py), and the OTA messages of protocol.py (types 10-12)."""

from __future__ import annotations

import cbor2
import pytest
from roadside.gateway import ota_bundle as ob
from roadside.gateway import protocol as p
from roadside.gateway.errors import ProtocolError
from roadside.gateway.ota.bundle import BundleError, read
from support.ota_node import make_bundle, tag_of


def test_a_good_bundle_reads_and_fits_by_board_and_role():
    data = make_bundle({"a.mpy": b"a" * 700, "main.py": b"m" * 10}, "1.4.0",
                       boards=("sim", "esp32-devkitc-v4"), roles=("water", "rain"))
    b = read(data)
    size = len(ob.archive({"a.mpy": b"a" * 700, "main.py": b"m" * 10}))
    assert (b.kind, b.version, b.manifest.size, b.tag) == ("app", "1.4.0", size, tag_of(data))
    assert b.fits("sim", "water") is None and b.fits("esp32-devkitc-v4", "rain") is None
    assert b.fits("esp32-c3", "water") == "board" and b.fits("sim", "toll") == "role"


@pytest.mark.parametrize("mutate, text", [
    (lambda m: b"not cbor", "bundle is not a roadside OTA bundle (not CBOR"),
    (lambda m: cbor2.dumps({**m, 1: "kernel"}), "bundle: bad kind, manifest, mac or payload"),
    (lambda m: cbor2.dumps({**m, 4: m[4][:-1]}), "bundle is damaged: piece 0 does not match"),
    (lambda m: cbor2.dumps({**m, 4: b"x" + m[4][1:]}), "bundle is damaged: piece 0 does not"),
    (lambda m: cbor2.dumps({**m, 3: b"short"}), "bundle: bad kind, manifest, mac or payload"),
    (lambda m: cbor2.dumps({k: v for k, v in m.items() if k != 2}),
     "bundle is not a roadside OTA bundle (expected the map"),
])
def test_bad_bundles_are_refused_with_one_line(mutate, text):
    good = cbor2.loads(make_bundle({"a.mpy": b"a" * 700, "main.py": b"m" * 10}))
    with pytest.raises(BundleError, match=text.replace("(", r"\(").replace(")", r"\)")):
        read(mutate(good))


def test_ota_messages_round_trip_and_bad_ones_are_named():
    st = p.OtaState("receiving", 2048, b"\x01" * 8, None, "1.0.0")
    assert p.decode_message(p.encode_message(st)) == st
    offer = p.OtaOffer("app", b"m", b"\x00" * 32, True)
    assert p.decode_message(p.encode_message(offer)) == offer
    chunk = p.OtaChunk(b"\x02" * 8, 512, b"d" * 512)
    assert p.decode_message(p.encode_message(chunk)) == chunk
    with pytest.raises(ProtocolError, match="OTA_STATE: key 2: unknown state 'asleep'"):
        p.decode_message(cbor2.dumps({0: p.OTA_STATE, 2: "asleep", 3: 0}))
    with pytest.raises(ProtocolError, match="OTA_STATE: key 1 must be bytes"):
        p.decode_message(cbor2.dumps({0: p.OTA_STATE, 1: "tag", 2: "idle", 3: 0}))


def test_a_bundle_for_another_protocol_or_with_bad_boards_is_refused():
    def remade(key: int, value: object) -> bytes:
        b = ob.parse(make_bundle({"main.py": b"m" * 10}))
        m = {**b.manifest, key: value}
        mb = cbor2.dumps(m)
        return ob.Bundle(b.kind, mb, ob.mac_of(b"k" * 32, mb), b.payload, m).encode()

    with pytest.raises(BundleError, match="bundle is for protocol 2; this gateway speaks 1"):
        read(remade(ob.M_PROTOCOL, 2))
    with pytest.raises(BundleError, match="boards must be a list of text"):
        read(remade(ob.M_BOARDS, "sim"))


def test_the_ota_vectors_decode_and_encode_byte_for_byte_on_the_gateway():
    """tests/vectors/ota.json (the node answers them byte for byte): the gateway's decoder
    takes each frame, and encodes what it sends (OFFER, CHUNK) to the same bytes."""
    import json
    from pathlib import Path

    vectors = json.loads((Path(__file__).parents[1] / "vectors" / "ota.json").read_text())
    assert len(vectors["valid"]) >= 10
    for v in vectors["valid"]:
        (payload,) = p.FrameDecoder().feed(bytes.fromhex(v["frame"]))
        assert payload.hex() == v["payload"], v["name"]
        msg = p.decode_message(payload)
        assert msg.TYPE == v["type"], v["name"]
        if v["type"] in (p.OTA_OFFER, p.OTA_CHUNK):
            assert p.encode_frame(msg).hex() == v["frame"], v["name"]
