"""Write tests/vectors/ble_auth.json: the BLE handshake and sealed frames, computed by the
gateway's code (gateway/ble_auth.py). The firmware (under MicroPython) and the gateway tests
both check against this file, so the two implementations cannot drift apart.

    .venv/bin/python tests/vectors/make_ble_vectors.py
"""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
from roadside.gateway import ble_auth as a

OUT = Path(__file__).with_name("ble_auth.json")


def main() -> None:
    secret = bytes(range(32))
    ng = bytes.fromhex("00112233445566778899aabbccddeeff")
    nn = bytes.fromhex("f0e0d0c0b0a090807060504030201000")
    node = "wl-0001"
    auth = a.GatewayAuth(secret, node, rng=lambda n: ng)
    challenge = auth.challenge()
    node_mac = a.hmac_sha256(secret, a.L_NODE + ng + nn + node.encode())
    response = cbor2.dumps({0: a.AUTH, 1: a.A_RESPONSE, 2: nn, 3: node_mac, 4: node})
    proof = auth.on_response(cbor2.loads(response))
    assert auth.channel is not None
    key = auth.channel.key
    inner_n = cbor2.dumps({0: 3, 1: 42})  # any payload: the tag covers its bytes
    inner_g = cbor2.dumps({0: 6, 1: 1767225600000})
    node_side = a.Channel(key, a.DIR_NODE, a.DIR_GATEWAY)
    sealed_n = [node_side.seal(inner_n).hex(), node_side.seal(inner_n).hex()]
    sealed_g = [auth.channel.seal(inner_g).hex(), auth.channel.seal(inner_g).hex()]
    doc = {
        "comment": "made by tests/vectors/make_ble_vectors.py; PROTOCOL.md section 5",
        "hmac_rfc4231": [
            {"key": "0b" * 20, "data": b"Hi There".hex(),
             "mac": "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
            {"key": b"Jefe".hex(), "data": b"what do ya want for nothing?".hex(),
             "mac": "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
            {"key": "aa" * 131,
             "data": b"Test Using Larger Than Block-Size Key - Hash Key First".hex(),
             "mac": "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
        ],
        "secret": secret.hex(), "node": node, "gateway_nonce": ng.hex(), "node_nonce": nn.hex(),
        "challenge": challenge.hex(), "response": response.hex(), "proof": proof.hex(),
        "session_key": key.hex(),
        "inner_node": inner_n.hex(), "sealed_node": sealed_n,
        "inner_gateway": inner_g.hex(), "sealed_gateway": sealed_g,
        "fingerprint": a.fingerprint(secret),
    }
    for v in doc["hmac_rfc4231"]:
        assert a.hmac_sha256(bytes.fromhex(v["key"]), bytes.fromhex(v["data"])).hex() == v["mac"]
    OUT.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
