"""Node ids are checked where they enter the gateway: a HELLO over a real pty whose id is a
path, a newline or 200 characters gets ERROR 2 and makes no node; valid ids still work."""

from __future__ import annotations

import pytest
from roadside.gateway import ids
from roadside.gateway import protocol as p
from roadside.gateway.config import ConfigError, parse
from test_gateway_session import run_with_gateway


def test_the_id_rule():
    for good in ("wl-0001", "sg_7", "A", "x" * 32):
        assert ids.check(good) == good
    for bad in ("../../x", "", "x" * 33, "wl 1", "wl\n1", "wl/1", "é", 7, None, b"wl-1"):
        with pytest.raises(ids.BadNodeId, match=r"use letters, digits, '-' and '_'"):
            ids.check(bad)
    assert len(str(ids.BadNodeId(ids.shown("y" * 1000)))) <= 40   # never echoes it all


@pytest.mark.parametrize("bad", ["../../x", "wl\n0001", "z" * 200, ""])
def test_hello_with_a_bad_node_id_is_refused(tmp_path, fake_node, bad):
    async def body(queue, sessions, link):
        fake_node.hello(bad)
        err = await fake_node.expect(p.Error)
        assert err.code == p.ERR_MALFORMED and "bad node id" in err.message
        assert len(err.message) < 100
        assert sessions.nodes == {} and sessions.sessions == {} and link.malformed == 1
        fake_node.hello("wl-0001")            # the same link then works for a valid id
        await fake_node.expect(p.Ack, seq=0)
        assert list(sessions.nodes) == ["wl-0001"]

    run_with_gateway(tmp_path, fake_node, body)


def test_ble_link_node_id_in_gateway_toml_is_checked(tmp_path):
    key = tmp_path / "k.key"
    key.write_text("00" * 32 + "\n")
    key.chmod(0o600)
    with pytest.raises(ConfigError, match=r"link\[0\]\.node: bad node id '\.\./x'"):
        parse({"gateway": {"id": "g", "site": "s"},
               "link": [{"type": "ble", "node": "../x", "secret_file": str(key)}]})
