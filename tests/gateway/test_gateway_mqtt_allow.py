"""The MQTT command topic runs only the commands its uplink's `command_allow` lists (default:
the read-only ones): a real mosquitto, the daemon in this loop, the fake node on a real pty.
A publisher on the topic asking for reboot, config.set or plan.select gets 403 and the node
never sees a COMMAND."""

from __future__ import annotations

import asyncio

import aiomqtt
import cbor2
import pytest
from roadside.gateway import daemon
from roadside.gateway import protocol as p
from roadside.gateway.config import READ_ONLY_COMMANDS, ConfigError, load, parse
from support import system
from support.gateway_status import link_open
from test_gateway_mqtt import MOSQUITTO, SKIP_REASON, Broker, free_port
from test_gateway_mqtt_commands import config_text


def test_command_allow_is_validated():
    def mqtt(**keys):
        return parse({"gateway": {"id": "g", "site": "s"},
                      "uplink": [{"type": "mqtt", "url": "mqtt://h", **keys}]}).uplinks[0]

    assert mqtt(command_topic="r/c").command_allow == READ_ONLY_COMMANDS
    assert "reboot" not in READ_ONLY_COMMANDS and "config.set" not in READ_ONLY_COMMANDS
    assert mqtt(command_topic="r/c", command_allow=["reboot"]).command_allow == ("reboot",)
    assert mqtt(command_topic="r/c", command_allow=[]).command_allow == ()
    for keys, text in [({"command_topic": "r/c", "command_allow": ["format"]},
                        r"command_allow: unknown command 'format'; known: ping"),
                       ({"command_topic": "r/c", "command_allow": "reboot"},
                        r"command_allow: must be a list of command names"),
                       ({"command_allow": ["ping"]}, r"command_allow: needs command_topic")]:
        with pytest.raises(ConfigError, match=text):
            mqtt(**keys)


@system.needs(MOSQUITTO, SKIP_REASON)
def test_only_allowed_commands_run_from_the_command_topic(tmp_path, fake_node):
    broker = Broker(tmp_path / "broker")
    broker.start()
    cfg = tmp_path / "gw.toml"
    listen = f"127.0.0.1:{free_port()}"
    status_url = f"http://{listen}/status"
    text = config_text(fake_node.path, str(tmp_path / "data"), broker.port, listen)
    cfg.write_text(text.replace('command_allow = ["ping", "config.set"]\n', ""))  # default
    config = load(cfg)
    cmd_topic, reply_topic = "roadside/site-c/gw-c/cmd", "roadside/site-c/gw-c/cmd/reply"

    async def main() -> list[p.Command]:
        stop = asyncio.Event()
        gw = asyncio.create_task(daemon.main(config, stop))
        try:
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="op") as op:
                await op.subscribe(reply_topic, qos=1)
                replies = aiter(op.messages)

                async def ask(doc: dict, timeout: float = 15) -> dict:
                    await op.publish(cmd_topic, cbor2.dumps(doc), qos=1)
                    async with asyncio.timeout(timeout):
                        while True:
                            r = cbor2.loads((await anext(replies)).payload)
                            if r.get("id") == doc["id"]:
                                return r

                # pyserial flushes the input when the gateway opens the port: a HELLO
                # written before is lost, and FakeNode does not resend it as a node would.
                await link_open(status_url, fake_node.path)
                fake_node.hello("wl-0001")
                await fake_node.expect(p.Ack, seq=0, timeout=10)
                # Until the gateway's subscription is in place nobody hears the topic.
                r = None
                for i in range(100):
                    assert not gw.done(), "the daemon stopped"
                    try:
                        r = await ask({"id": f"boot-{i}", "node": "wl-0001", "name": "reboot"},
                                      timeout=0.3)
                        break
                    except TimeoutError:
                        continue
                refused = [r]
                for i, (name, args) in enumerate([("config.set", {"key": "alarm_cm",
                                                                   "value": 1}),
                                                  ("plan.select", {"plan": 2}),
                                                  ("fault.clear", None)]):
                    refused.append(await ask({"id": i, "node": "wl-0001", "name": name,
                                              "args": args}))
                for r in refused:
                    assert (r["ok"], r["status"], r["outcome"]) == (False, 403, "refused"), r
                    assert "is not allowed on this command topic; allowed: ping, info," in \
                        r["error"] and "command_allow" in r["error"]
                await asyncio.sleep(0.3)
                fake_node._drain()
                assert not [m for m in fake_node.inbox if isinstance(m, p.Command)]

                async def node() -> p.Command:
                    cmd = await fake_node.expect(p.Command, timeout=10)
                    fake_node.send({0: p.REPLY, 1: cmd.request_id, 2: True, 3: {"a": 1}})
                    return cmd

                answer = asyncio.create_task(node())      # a read-only command still runs
                r = await ask({"id": "get", "node": "wl-0001", "name": "config.get"})
                assert r["ok"] is True and r["result"] == {"a": 1}
                return [await answer]
        finally:
            stop.set()
            assert await asyncio.wait_for(gw, 15) == 0

    try:
        sent = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        broker.stop()
    assert [c.name for c in sent] == ["config.get"]
