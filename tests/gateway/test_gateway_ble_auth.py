"""BLE security on the gateway (CPython): the same vectors as the firmware test, and the
refusals: a node with the wrong key, replayed / forged / truncated sealed frames."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import pytest
from roadside.gateway import ble_auth as a

V = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "ble_auth.json").read_text())


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def authed() -> a.GatewayAuth:
    auth = a.GatewayAuth(h(V["secret"]), V["node"], rng=lambda n: h(V["gateway_nonce"]))
    assert auth.challenge() == h(V["challenge"])
    assert auth.on_response(cbor2.loads(h(V["response"]))) == h(V["proof"])
    return auth


def test_vectors() -> None:
    for v in V["hmac_rfc4231"]:
        assert a.hmac_sha256(h(v["key"]), h(v["data"])) == h(v["mac"])
    auth = authed()
    assert auth.channel is not None and auth.channel.key == h(V["session_key"])
    assert auth.channel.seal(h(V["inner_gateway"])) == h(V["sealed_gateway"][0])
    for sealed in V["sealed_node"]:
        assert auth.channel.open(cbor2.loads(h(sealed))) == h(V["inner_node"])
    assert a.fingerprint(h(V["secret"])) == V["fingerprint"]


def test_wrong_key_and_wrong_node_refused() -> None:
    auth = a.GatewayAuth(b"\x01" * 32, V["node"], rng=lambda n: h(V["gateway_nonce"]))
    auth.challenge()
    with pytest.raises(a.AuthError, match="does not know the secret"):
        auth.on_response(cbor2.loads(h(V["response"])))
    assert auth.channel is None
    other = a.GatewayAuth(h(V["secret"]), "wl-0002", rng=lambda n: h(V["gateway_nonce"]))
    other.challenge()
    with pytest.raises(a.AuthError, match="expected 'wl-0002'"):
        other.on_response(cbor2.loads(h(V["response"])))
    # a response replayed against a fresh challenge fails: the MAC covers our nonce
    fresh = a.GatewayAuth(h(V["secret"]), V["node"])
    fresh.challenge()
    with pytest.raises(a.AuthError):
        fresh.on_response(cbor2.loads(h(V["response"])))
    refused = a.GatewayAuth(h(V["secret"]), V["node"])
    refused.challenge()
    with pytest.raises(a.AuthError, match="locked out"):
        refused.on_response({0: 7, 1: 7, 2: "locked out for 1000 ms"})


def test_replayed_forged_truncated_frames() -> None:
    ch = authed().channel
    assert ch is not None
    first = cbor2.loads(h(V["sealed_node"][0]))
    assert ch.open(first) == h(V["inner_node"])
    with pytest.raises(a.ChannelError, match="replayed"):
        ch.open(first)
    second = cbor2.loads(h(V["sealed_node"][1]))
    with pytest.raises(a.ChannelError, match="forged"):
        ch.open({**second, 2: second[2] + b"x"})
    with pytest.raises(a.ChannelError, match="malformed"):
        ch.open({**second, 3: second[3][:4]})
    assert ch.open(second) == h(V["inner_node"])
    assert ch.counts == {"replayed": 1, "forged": 1, "malformed": 1}


def test_secret_files(tmp_path: Path) -> None:
    raw = tmp_path / "raw.key"
    raw.write_bytes(bytes(range(32)))
    hexed = tmp_path / "hex.key"
    hexed.write_text(bytes(range(32)).hex() + "\n")
    assert a.load_secret(raw) == a.load_secret(hexed) == bytes(range(32))
    bad = tmp_path / "bad.key"
    bad.write_text("short")
    with pytest.raises(a.AuthError, match="32 bytes or 64 hex digits"):
        a.load_secret(bad)
    with pytest.raises(a.AuthError, match="cannot read"):
        a.load_secret(tmp_path / "missing.key")
