"""Remote commands over MQTT: a real mosquitto, the daemon (daemon.main in this loop) with an
MQTT uplink that has a command_topic, the fake node on a real pty answering the COMMAND."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3

import aiomqtt
import cbor2
import pytest
from roadside.gateway import daemon
from roadside.gateway import protocol as p
from roadside.gateway.config import ConfigError, load, parse
from support import system
from support.gateway_status import link_open
from test_gateway_mqtt import MOSQUITTO, SKIP_REASON, Broker, free_port

pytestmark = system.needs(MOSQUITTO, SKIP_REASON)


def config_text(port_path: str, data: str, broker_port: int, listen: str) -> str:
    return f"""
[gateway]
id = "gw-c"
site = "site-c"
data_dir = "{data}"

[[link]]
type = "serial"
port = "{port_path}"

[batch]
max_age_s = 0.05

[[uplink]]
type = "mqtt"
url = "mqtt://127.0.0.1:{broker_port}"
timeout_s = 3.0
backoff_initial_s = 0.05
backoff_max_s = 0.3
command_topic = "roadside/{{site}}/{{gateway}}/cmd"
command_allow = ["ping", "config.set"]

[status]
listen = "{listen}"
"""


def test_command_topic_config_is_validated():
    base = {"gateway": {"id": "g", "site": "s"}}

    def mqtt(**keys):
        return parse({**base, "uplink": [{"type": "mqtt", "url": "mqtt://h", **keys}]})

    assert mqtt().uplinks[0].command_topic is None          # off unless set
    u = mqtt(command_topic="r/{site}/{gateway}/cmd").uplinks[0]
    assert (u.command_topic, u.reply_topic) == ("r/{site}/{gateway}/cmd",
                                                "r/{site}/{gateway}/cmd/reply")
    allow = mqtt(command_topic="r/c", command_allow=["ota.push", "ota.cancel"]).uplinks[0]
    assert allow.command_allow == ("ota.push", "ota.cancel")       # never by default
    assert "ota.cancel" not in u.command_allow
    for keys, text in [({"command_topic": "r/{kind}/cmd"}, "command_topic"),
                       ({"command_topic": "r/+/cmd"}, "no MQTT wildcards"),
                       ({"reply_topic": "r/reply"}, "needs command_topic"),
                       ({"command_topic": "r/c", "reply_topic": "r/c"}, "must differ")]:
        with pytest.raises(ConfigError, match=text):
            mqtt(**keys)


def test_commands_over_mqtt_with_replies_dedupe_and_audit(tmp_path, fake_node):
    broker = Broker(tmp_path / "broker")
    broker.start()
    cfg = tmp_path / "gw.toml"
    listen = f"127.0.0.1:{free_port()}"
    status_url = f"http://{listen}/status"
    cfg.write_text(config_text(fake_node.path, str(tmp_path / "data"), broker.port, listen))
    config = load(cfg)
    cmd_topic, reply_topic = "roadside/site-c/gw-c/cmd", "roadside/site-c/gw-c/cmd/reply"
    commands_seen: list[p.Command] = []

    async def node() -> None:
        """Answer every COMMAND like the firmware: ping -> pong, config.set -> ok."""
        while True:
            cmd = await fake_node.expect(p.Command, timeout=30)
            commands_seen.append(cmd)
            if cmd.name == "ping":
                fake_node.send({0: p.REPLY, 1: cmd.request_id, 2: True, 3: "pong"})
            elif cmd.name == "config.set":
                if cmd.args["key"] == "alarm_cm":
                    fake_node.send({0: p.REPLY, 1: cmd.request_id, 2: True,
                                    3: {cmd.args["key"]: cmd.args["value"]}})
                else:
                    fake_node.send({0: p.REPLY, 1: cmd.request_id, 2: False,
                                    4: f"unknown key {cmd.args['key']}"})

    async def main() -> None:
        stop = asyncio.Event()
        gw = asyncio.create_task(daemon.main(config, stop))
        responder = None
        try:
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="operator") as op:
                await op.subscribe(reply_topic, qos=1)
                replies = aiter(op.messages)

                async def reply_to(cid, as_json: bool = False, timeout: float = 15) -> dict:
                    """The next reply with id `cid` (replies to earlier tries are skipped)."""
                    async with asyncio.timeout(timeout):
                        while True:
                            msg = await anext(replies)
                            assert str(msg.topic) == reply_topic
                            doc = (json.loads(msg.payload) if as_json
                                   else cbor2.loads(msg.payload))
                            if doc.get("id") == cid:
                                return doc

                async def ask(doc: dict, as_json: bool = False) -> dict:
                    body = json.dumps(doc).encode() if as_json else cbor2.dumps(doc)
                    await op.publish(cmd_topic, body, qos=1)
                    return await reply_to(doc["id"], as_json)

                # A command before HELLO: the node is unknown (sent until the gateway's
                # subscription is in place: before that nobody receives it).
                r = None
                for i in range(100):
                    assert not gw.done(), "the daemon stopped"
                    body = cbor2.dumps({"id": f"early-{i}", "node": "wl-0001", "name": "ping"})
                    await op.publish(cmd_topic, body, qos=1)
                    try:
                        r = await reply_to(f"early-{i}", timeout=0.3)
                        break
                    except TimeoutError:
                        continue
                assert r is not None and r["ok"] is False
                assert r["status"] == 404 and "unknown to this gateway" in r["error"]

                # pyserial flushes the input when the gateway opens the port: a HELLO
                # written before is lost, and FakeNode does not resend it as a node would.
                await link_open(status_url, fake_node.path)
                fake_node.hello("wl-0001")
                await fake_node.expect(p.Ack, seq=0, timeout=10)
                responder = asyncio.create_task(node())

                r = await ask({"id": "c-1", "node": "wl-0001", "name": "ping", "who": "ops"})
                assert r["id"] == "c-1" and r["ok"] is True and r["result"] == "pong"
                assert r["outcome"] == "ok" and isinstance(r["request_id"], int)
                first_rid = r["request_id"]

                r = await ask({"id": 7, "node": "wl-0001", "name": "config.set",
                               "args": {"key": "alarm_cm", "value": 120}}, as_json=True)
                assert r == {"id": 7, "node": "wl-0001", "name": "config.set", "ok": True,
                             "request_id": first_rid + 1, "outcome": "ok", "attempts": 1,
                             "result": {"alarm_cm": 120}}

                # The node refuses: ok false with its error, still a request id.
                r = await ask({"id": "c-3", "node": "wl-0001", "name": "config.set",
                               "args": {"key": "nope", "value": 1}})
                assert r["ok"] is False and r["error"] == "unknown key nope"
                assert r["outcome"] == "error" and r["request_id"] == first_rid + 2

                # A redelivered id is answered again without running the command twice.
                n = len(commands_seen)
                r = await ask({"id": "c-1", "node": "wl-0001", "name": "ping"})
                assert r["result"] == "pong" and r["request_id"] == first_rid
                assert len(commands_seen) == n

                # Bad requests are answered, never run.
                r = await ask({"id": "c-5", "node": "wl-0001", "name": "format-disk"})
                assert r["ok"] is False and r["status"] == 400 and "unknown command" in \
                    r["error"]
                await op.publish(cmd_topic, b"\xff\xfe not a map", qos=1)
                r = await reply_to(None)
                assert r["ok"] is False and r["status"] == 400
                assert len(commands_seen) == n
        finally:
            if responder is not None:
                responder.cancel()
            stop.set()
            assert await asyncio.wait_for(gw, 15) == 0

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        broker.stop()
    db = sqlite3.connect(tmp_path / "data" / "commands.sqlite")
    rows = db.execute("SELECT who, origin, node, name, outcome FROM commands"
                      " ORDER BY request_id").fetchall()
    db.close()
    assert rows == [("ops", "mqtt", "wl-0001", "ping", "ok"),
                    ("mqtt", "mqtt", "wl-0001", "config.set", "ok"),
                    ("mqtt", "mqtt", "wl-0001", "config.set", "error")]


def test_ota_push_over_the_command_topic(tmp_path):
    """`ota.push` on the command topic starts a rollout (when command_allow lists it); the
    scripted contract node is updated; the rollout's final outcome follows on the reply topic;
    `ota.cancel` stops a second one mid-transfer (its final outcome: cancelled); a bad bundle
    is answered with one error."""
    from support.ota_node import OtaNode, make_bundle

    node = OtaNode("wl-0001")
    broker = Broker(tmp_path / "broker")
    broker.start()
    cfg = tmp_path / "gw.toml"
    listen = f"127.0.0.1:{free_port()}"
    text = config_text(node.path, str(tmp_path / "data"), broker.port, listen)
    cfg.write_text(text.replace('command_allow = ["ping", "config.set"]',
                                'command_allow = ["ping", "ota.push", "ota.cancel"]'))
    config = load(cfg)
    cmd_topic, reply_topic = "roadside/site-c/gw-c/cmd", "roadside/site-c/gw-c/cmd/reply"
    bundle = make_bundle({"main.py": b"m" * 3000}, "1.1.0")

    async def main() -> None:
        stop = asyncio.Event()
        gw = asyncio.create_task(daemon.main(config, stop))
        node.start()
        try:
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="operator") as op:
                await op.subscribe(reply_topic, qos=1)
                replies = aiter(op.messages)
                await link_open(f"http://{listen}/status", node.path)
                node.hello()
                await node.until(node.session.is_set, "HELLO acked")
                r = None
                for i in range(100):     # until the gateway's subscription is in place
                    assert not gw.done(), "the daemon stopped"
                    await op.publish(cmd_topic, json.dumps(
                        {"id": f"o-{i}", "name": "ota.push", "nodes": ["wl-0001"],
                         "bundle": base64.b64encode(bundle).decode(), "who": "ops"}).encode(),
                        qos=1)
                    try:
                        async with asyncio.timeout(0.3):
                            msg = await anext(replies)
                        r = json.loads(msg.payload)
                        break
                    except TimeoutError:
                        continue
                assert r is not None and r["ok"] is True and r["status"] == 202, r
                assert r["rollout"]["nodes"][0]["node"] == "wl-0001"
                pushed, rid = r["id"], r["rollout"]["id"]
                await node.until(lambda: node.state == "done", "updated over MQTT")
                assert node.version == "1.1.0"

                async def final() -> dict:
                    """The next final outcome on the reply topic (a retry's 409 skipped)."""
                    async with asyncio.timeout(15):
                        while True:
                            raw = (await anext(replies)).payload
                            try:
                                m = json.loads(raw)
                            except ValueError:
                                m = cbor2.loads(raw)
                            if m.get("final"):
                                return m

                # The rollout's end, once, on the reply topic, in the request's encoding.
                f = await final()
                assert (f["id"], f["name"], f["ok"], f["state"]) == (pushed, "ota.push", True,
                                                                     "done"), f
                assert f["rollout"]["id"] == rid
                assert [(n["node"], n["state"]) for n in f["rollout"]["nodes"]] == [
                    ("wl-0001", "done")]

                # ota.cancel: a second rollout (CBOR) stopped mid-transfer.
                big = make_bundle({"main.py": bytes(range(256)) * 80}, "1.2.0")   # ~4 s
                await op.publish(cmd_topic, cbor2.dumps({"id": "p-2", "name": "ota.push",
                                                         "nodes": ["wl-0001"], "bundle": big}),
                                 qos=1)
                async with asyncio.timeout(10):
                    r = cbor2.loads((await anext(replies)).payload)
                assert r["ok"] is True and r["status"] == 202, r
                rid2 = r["rollout"]["id"]
                await node.until(lambda: node.have > 0, "chunks of the second rollout")
                await op.publish(cmd_topic, cbor2.dumps({"id": "c-1", "name": "ota.cancel",
                                                         "rollout": rid2, "who": "ops"}), qos=1)
                async with asyncio.timeout(10):
                    r = cbor2.loads((await anext(replies)).payload)
                assert r["ok"] is True and r["status"] == 200, r
                assert r["rollout"]["state"] == "cancelled"
                assert r["rollout"]["reason"] == "cancelled by ops"
                assert r["rollout"]["nodes"][0]["state"] == "cancelled"
                f = await final()
                assert (f["id"], f["ok"], f["state"]) == ("p-2", False, "cancelled"), f
                assert node.have < len(cbor2.loads(big)[4]) and node.version == "1.1.0"
                # Cancelling again: one clear error.
                await op.publish(cmd_topic, cbor2.dumps({"id": "c-2", "name": "ota.cancel"}),
                                 qos=1)
                async with asyncio.timeout(10):
                    r = cbor2.loads((await anext(replies)).payload)
                assert r["ok"] is False and r["status"] == 409, r
                assert r["error"].startswith("no rollout is running on this gateway"), r
                # Bad requests get one clear error.
                await op.publish(cmd_topic, cbor2.dumps({"id": "bad", "name": "ota.push",
                                                         "site": True, "bundle": b"junk"}),
                                 qos=1)
                async with asyncio.timeout(10):
                    r = cbor2.loads((await anext(replies)).payload)
                assert r["ok"] is False and r["status"] == 400
                assert r["error"].startswith("bundle is not a roadside OTA bundle (not CBOR")
        finally:
            stop.set()
            assert await asyncio.wait_for(gw, 15) == 0

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        broker.stop()
        node.close()
