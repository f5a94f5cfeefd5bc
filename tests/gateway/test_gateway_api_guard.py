"""The command API against a web page in the operator's browser: the real daemon on loopback,
a fake node on a real pty, and requests as a browser would send them for a hostile page (a
text/plain form POST with a foreign Origin; a rebound DNS name in Host). None reaches the
node; `roadside gateway cmd`'s request (JSON, the token from data_dir/api.token) does."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import stat

import pytest
from roadside.gateway import daemon
from roadside.gateway import protocol as p
from roadside.gateway.config import load
from roadside.tools.sim.gateway_toml import write


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, path: str, body: bytes, headers: dict[str, str],
          method: str = "POST") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body if method == "POST" else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def test_command_api_refuses_cross_site_and_rebound_requests(tmp_path, fake_node):
    port = _free_port()
    cfg = write(tmp_path / "gw.toml", [fake_node.path], tmp_path / "data", None,
                f"127.0.0.1:{port}")
    config = load(cfg)
    token_file = tmp_path / "data" / "api.token"
    here = f"127.0.0.1:{port}"
    reboot = json.dumps({"name": "reboot", "who": "page"}).encode()
    ping = json.dumps({"name": "ping", "who": "test"}).encode()

    async def main() -> list[tuple[str, int, str]]:
        stop = asyncio.Event()
        gw = asyncio.create_task(daemon.main(config, stop))
        try:
            async with asyncio.timeout(20):   # HELLO until the link is open and answers
                while True:
                    assert not gw.done(), "the daemon stopped"
                    fake_node.hello("wl-0001")
                    try:
                        await fake_node.expect(p.Ack, timeout=0.5)
                        break
                    except AssertionError:
                        continue
            token = token_file.read_text().strip()
            good = {"Host": here, "Content-Type": "application/json",
                    "Authorization": f"Bearer {token}"}
            attacks = {
                # a form on any web page: text/plain, the page's Origin
                "csrf text/plain": {"Host": here, "Content-Type": "text/plain",
                                    "Origin": "http://evil.example"},
                # DNS rebinding: the attacker's name resolves to 127.0.0.1, same-origin to it
                "rebound Host": {**good, "Host": f"evil.example:{port}",
                                 "Origin": f"http://evil.example:{port}"},
                "foreign Origin": {**good, "Origin": "http://evil.example"},
                "null Origin": {**good, "Origin": "null"},
                "other port": {**good, "Origin": "http://127.0.0.1:1"},
                "text/plain with token": {**good, "Content-Type": "text/plain"},
                "no token": {k: v for k, v in good.items() if k != "Authorization"},
                "wrong token": {**good, "Authorization": "Bearer " + "0" * 64},
            }
            seen = []
            for what, headers in attacks.items():
                status, doc = await asyncio.to_thread(
                    _post, port, "/nodes/wl-0001/commands", reboot, headers)
                seen.append((what, status, doc["error"]))
            status, _ = await asyncio.to_thread(_post, port, "/commands", b"",
                                                {"Host": here}, "GET")
            seen.append(("audit log without token", status, ""))
            await asyncio.sleep(0.3)
            fake_node._drain()
            assert not [m for m in fake_node.inbox if isinstance(m, p.Command)], \
                "a refused request reached the node"

            async def answer() -> p.Command:
                cmd = await fake_node.expect(p.Command, timeout=10)
                fake_node.send({0: p.REPLY, 1: cmd.request_id, 2: True, 3: "pong"})
                return cmd

            # What `roadside gateway cmd` sends, with and without the page's own Origin.
            for headers in (good, {**good, "Origin": f"http://{here}"}):
                node = asyncio.create_task(answer())
                status, doc = await asyncio.to_thread(
                    _post, port, "/nodes/wl-0001/commands", ping, headers)
                assert (status, doc["result"]) == (200, "pong"), doc
                assert (await node).name == "ping"
            status, doc = await asyncio.to_thread(      # ids are checked where they enter
                _post, port, "/nodes/" + "%2E%2E%2Fx" + "y" * 200 + "/commands", ping, good)
            assert status == 400 and "bad node id '../xyyy" in doc["error"]
            assert len(doc["error"]) < 150
            status, rows = await asyncio.to_thread(_post, port, "/commands", b"", good, "GET")
            assert status == 200 and [r["name"] for r in rows] == ["ping", "ping"]
            return seen
        finally:
            stop.set()
            assert await asyncio.wait_for(gw, 15) == 0

    seen = asyncio.run(asyncio.wait_for(main(), 60))
    statuses = {what: status for what, status, _ in seen}
    assert statuses == {"csrf text/plain": 403, "rebound Host": 403, "foreign Origin": 403,
                        "null Origin": 403, "other port": 403, "text/plain with token": 415,
                        "no token": 401, "wrong token": 401, "audit log without token": 401}
    errors = {what: err for what, _, err in seen}
    assert "Host 'evil.example:" in errors["rebound Host"]
    assert "not accepted from web pages" in errors["foreign Origin"]
    assert "data_dir/api.token" in errors["no token"]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_the_token_file_is_kept_remade_when_empty_and_warned_about(tmp_path, caplog):
    from roadside.gateway import api_token
    from roadside.gateway.config import ConfigError

    path = api_token.path_in(tmp_path)
    token = api_token.ensure(path)
    assert len(token) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert api_token.ensure(path) == token                # the same after a restart
    path.write_text("")                                   # cut during the first start
    assert api_token.ensure(path) not in ("", token)
    path.chmod(0o644)
    api_token.ensure(path)
    assert "readable by others (mode 0644)" in caplog.text
    with pytest.raises(ConfigError, match=r"command API token .*: No such file or directory;"
                                          r" the gateway's user must be able to create"):
        api_token.ensure(tmp_path / "missing-dir" / "api.token")
