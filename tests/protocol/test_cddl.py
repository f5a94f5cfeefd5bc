"""The protocol's CBOR shapes (docs/protocol.cddl) against the conformance vectors, with zcbor."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import pytest
from roadside.tools.sim.cddl import Schema, SchemaError, protocol_schema

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "frames.json").read_text())
RULE_OF_TYPE = {1: "hello", 2: "records", 3: "ack", 4: "command", 5: "reply", 6: "time-sync",
                7: "error", 10: "ota-offer", 11: "ota-chunk", 12: "ota-state"}
OTA = json.loads((Path(__file__).parents[1] / "vectors" / "ota.json").read_text())


@pytest.fixture(scope="module")
def schema() -> Schema:
    return protocol_schema()


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_every_vector_message_matches_its_cddl_rule(schema, vector):
    message = cbor2.loads(bytes.fromhex(vector["payload"]))
    schema.validate(message, RULE_OF_TYPE[vector["type"]])
    schema.validate(message, "message")


@pytest.mark.parametrize("vector", OTA["valid"], ids=lambda v: v["name"])
def test_every_ota_vector_matches_its_cddl_rule(schema, vector):
    message = cbor2.loads(bytes.fromhex(vector["payload"]))
    schema.validate(message, RULE_OF_TYPE[vector["type"]])
    schema.validate(message, "message")
    if vector["type"] == 10:
        schema.validate(cbor2.loads(message[2]), "ota-manifest")


@pytest.mark.parametrize("bad, rule, why", [
    ({0: 12, 2: "lost", 3: 0}, "ota-state", "No matches for union"),
    ({0: 11, 1: b"12345678", 2: 0, 3: b"x" * 513}, "ota-chunk", "Maximum length: 512"),
    ({0: 3, 1: -1}, "ack", "unsigned"),
    ({0: 1, 1: "wl-0001"}, "hello", "missing the key 2"),
    ({0: 2, 1: 1, 2: [[1, 2, 3]]}, "records", "records"),
    ({0: 2, 1: 1, 2: [[1, 2, 1, 0, {1: [1]}]]}, "records", "records"),
    ({0: 4, 1: 1, 2: 7}, "command", "text string"),
    ({0: 6, 1: "now"}, "time-sync", "unsigned integer"),
])
def test_malformed_messages_are_rejected_with_the_path(schema, bad, rule, why):
    with pytest.raises(SchemaError, match=why):
        schema.validate(bad, rule)


def test_uplink_batch_rule_accepts_the_documented_example(schema):
    batch = {"batch": "b-1", "gateway": "gw", "site": "s", "created": 1795420800, "records": [
        {"node": "wl-0001", "seq": 1, "t": 1795420800, "kind": "level", "role": "water",
         "synced": True, "priority": False, "data": {"level_cm": 12.5, "distance_mm": 1874}}]}
    schema.validate(batch, "uplink-batch")
    batch["records"][0]["seq"] = -1
    with pytest.raises(SchemaError, match="seq"):
        schema.validate(batch, "uplink-batch")
