"""Operator commands: `roadside gateway cmd` -> the daemon's local API -> COMMAND on the node's
pty -> REPLY back; retries with the same request id; the audit log in data_dir."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import make_mocked_request
from roadside.gateway import protocol as p
from roadside.gateway.commands import Commander, CommandError, validate
from roadside.gateway.status import Status
from roadside.tools.admin.api import parse_args
from roadside.tools.sim import procs
from roadside.tools.sim.gateway_toml import write
from support.cli import roadside
from support.gateway_status import link_open


def test_commands_through_the_daemon_with_retry_audit_and_errors(tmp_path, fake_node):
    listen = f"127.0.0.1:{_free_port()}"
    cfg = write(tmp_path / "gw.toml", [fake_node.path], tmp_path / "data", None, listen)
    log = tmp_path / "gw.log"
    proc = procs.spawn([sys.executable, "-m", "roadside.gateway.daemon", "--config",
                        str(cfg)], log)
    conf = str(cfg)

    async def node_answers(n: int, drop_first: bool = False, ok: bool = True,
                           result=None, error=None):
        """Answer the next `n` COMMANDs like the firmware (drop the first when asked)."""
        seen = []
        for i in range(n):
            cmd = await fake_node.expect(p.Command, timeout=10)
            seen.append(cmd)
            if drop_first and i == 0:
                continue
            reply = {0: p.REPLY, 1: cmd.request_id, 2: ok}
            if ok:
                reply[3] = result
            else:
                reply[4] = error
            fake_node.send(reply)
        return seen

    async def main():
        url = (await asyncio.to_thread(procs.wait_for_line, log, r"status on (http://\S+)",
                                       proc, 20)).group(1)
        await link_open(url, fake_node.path)     # pyserial flushes the input on open
        # Before HELLO the gateway does not know the node.
        code, _, err = await roadside("gateway", "cmd", "--config", conf, "wl-0001", "ping")
        assert code == 2 and "node 'wl-0001' is unknown to this gateway" in err, err
        fake_node.hello("wl-0001")
        await fake_node.expect(p.Ack, seq=0)

        # ping: the REPLY comes back as the command's output.
        answer = asyncio.create_task(node_answers(1, result="pong"))
        code, out, err = await roadside("gateway", "cmd", "--config", conf, "wl-0001", "ping")
        (ping,) = await answer
        assert (code, json.loads(out), err) == (0, "pong", "")
        assert ping.name == "ping" and ping.args is None

        # config.set: args typed from KEY=VALUE; the first COMMAND is lost: sent again with
        # the same request id.
        answer = asyncio.create_task(node_answers(2, drop_first=True, result=120))
        code, out, err = await roadside("gateway", "cmd", "--config", conf, "--timeout",
                                        "0.3", "wl-0001", "config.set", "key=alarm_cm",
                                        "value=120")
        first, second = await answer
        assert (code, json.loads(out)) == (0, 120), err
        assert first.request_id == second.request_id == ping.request_id + 1
        assert second.args == {"key": "alarm_cm", "value": 120}

        # The node refuses: exit 1 with its error text.
        answer = asyncio.create_task(node_answers(
            1, ok=False, error="config.set: alarm_cm must be a number 0..1000, got 'x'"))
        code, out, err = await roadside("gateway", "cmd", "--config", conf, "wl-0001",
                                        "config.set", "key=alarm_cm", "value=x")
        await answer
        assert code == 1 and out == ""
        assert "wl-0001 refused config.set" in err and "got 'x'" in err

        # No REPLY at all: every attempt with the same id, then exit 1.
        code, _, err = await roadside("gateway", "cmd", "--config", conf, "--timeout", "0.2",
                                      "--attempts", "2", "wl-0001", "info")
        assert code == 1 and "did not answer info" in err and "after 2 attempts" in err
        sent = [m for m in (await _drain(fake_node)) if isinstance(m, p.Command)]
        assert len(sent) == 2 and sent[0].request_id == sent[1].request_id

        # Refused by the gateway before anything is sent: unknown command, bad args.
        code, _, err = await roadside("gateway", "cmd", "--config", conf, "wl-0001",
                                      "selfdestruct")
        assert code == 2 and ("name: unknown command 'selfdestruct'; allowed: ping, info,"
                              " config.get, config.set, reboot") in err
        code, _, err = await roadside("gateway", "cmd", "--config", conf, "wl-0001",
                                      "config.set", "key=alarm_cm")
        assert code == 2 and "args.value: missing; config.set needs key, value" in err

        code, out, _ = await roadside("gateway", "commands", "--config", conf)
        assert code == 0
        return [json.loads(line) for line in out.splitlines()]

    try:
        rows = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        procs.stop(proc)
    assert [(r["name"], r["outcome"], r["attempts"]) for r in rows] == [
        ("info", "timeout", 2), ("config.set", "error", 1), ("config.set", "ok", 2),
        ("ping", "ok", 1)]
    assert rows[3]["result"] == "pong" and rows[2]["args"] == {"key": "alarm_cm", "value": 120}
    assert all("@" in r["who"] and r["origin"] == "127.0.0.1" for r in rows)
    # The audit log is a real SQLite file in data_dir, readable with sqlite3.
    db = sqlite3.connect(tmp_path / "data" / "commands.sqlite")
    assert db.execute("SELECT count(*), min(request_id) FROM commands").fetchone() == (4, 1)
    db.close()


async def _drain(node):
    await asyncio.sleep(0.05)
    node._drain()
    out, node.inbox[:] = list(node.inbox), []
    return out


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_validate_and_parse_args():
    assert validate("ping", None) is None
    assert validate("config.get", {"key": "alarm_cm"}) == {"key": "alarm_cm"}
    with pytest.raises(CommandError, match=r"args.force: not an argument of reboot; allowed:"
                                           r" none"):
        validate("reboot", {"force": True})
    with pytest.raises(CommandError, match=r"args.key: must be text, got 3"):
        validate("config.get", {"key": 3})
    assert parse_args(["key=alarm_cm", "value=120", "flag=true", "s=\"120\"", "x={\"a\":1}"]
                      ) == {"key": "alarm_cm", "value": 120, "flag": True, "s": "120",
                            "x": {"a": 1}}


def test_request_ids_continue_after_a_restart_and_api_is_loopback_only(tmp_path):
    sessions = SimpleNamespace(sessions={}, nodes={}, on_reply=None)
    c = Commander(sessions, tmp_path / "commands.sqlite")
    c.audit.start(41, "me@h", "127.0.0.1", "wl-1", "ping", None)
    c.audit.finish(41, "ok", "pong", 1)
    c.close()
    c = Commander(sessions, tmp_path / "commands.sqlite")
    assert c._next_id == 42 and sessions.on_reply == c.on_reply
    c.close()

    def remote(addr):
        transport = SimpleNamespace(get_extra_info=lambda name, default=None: (
            (addr, 5555) if name == "peername" else default), is_closing=lambda: False)
        return make_mocked_request("POST", "/nodes/wl-1/commands", transport=transport)

    assert Status._local(remote("127.0.0.1")) and Status._local(remote("::1"))
    assert not Status._local(remote("192.0.2.7"))
