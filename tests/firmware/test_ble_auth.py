"""BLE security on the node, under MicroPython: HMAC-SHA256 (RFC 4231), the AUTH handshake and
SEALED frames against the shared vectors (tests/vectors/ble_auth.json, made by the gateway's
code), and the attacks: command before auth, wrong key, replayed proof, forged / replayed /
truncated frames, lockout doubling, secret.set refused over BLE and kept out of replies."""

from __future__ import annotations

from pathlib import Path

from support.bare_session import SESSION
from support.micropython import run_stdout

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "ble_auth.json"

PRELUDE = f"VECTORS_PATH = {str(VECTORS)!r}\n" + r"""
import json
from roadside_node import auth, handshake, provision, proto, cbor
V = json.loads(open(VECTORS_PATH).read())
def h(s): return bytes(int(s[i:i + 2], 16) for i in range(0, len(s), 2))
class HW:
    t = 1000
    nonce = h(V["node_nonce"])
    def ticks_ms(self): return self.t
    def ticks_diff(self, a, b): return a - b
    def random_bytes(self, n): return self.nonce
sent = []
hw = HW()
def make(secret=None):
    del sent[:]
    c = auth.Channel(V["node"], hw, sent.append, secret=secret or h(V["secret"]),
                     log=lambda s: None)
    c.dropped = []
    c.on_fail = lambda: c.dropped.append(1)
    return c
def etype(p):
    m = cbor.loads(p)
    return (m[0], m.get(1))
"""


def test_hmac_and_handshake_match_the_vectors() -> None:
    out = run_stdout(PRELUDE + r"""
for v in V["hmac_rfc4231"]:
    assert handshake.hmac_sha256(h(v["key"]), h(v["data"])) == h(v["mac"]), v
c = make()
assert c.handle(h(V["challenge"])) is None
assert sent[-1] == h(V["response"]), sent
assert not c.authed
c.handle(h(V["proof"]))
assert c.authed and c.stats["auth_ok"] == 1
import sys
assert "roadside_node.handshake" not in sys.modules  # held for its step only
inner = h(V["inner_node"])
assert c.seal(inner) == h(V["sealed_node"][0])
assert c.seal(inner) == h(V["sealed_node"][1])
assert c.handle(h(V["sealed_gateway"][0])) == h(V["inner_gateway"])
assert c.handle(h(V["sealed_gateway"][1])) == h(V["inner_gateway"])
assert provision.fingerprint(h(V["secret"])) == V["fingerprint"]
print("ok")
""")
    assert out.strip() == "ok"


def test_attacks_are_refused_and_counted() -> None:
    out = run_stdout(PRELUDE + r"""
c = make()
# a command before authentication: refused with ERROR 7, nothing reaches the session
cmd = cbor.dumps({0: 4, 1: 1, 2: "config.set", 3: {"key": "role", "value": "toll"}})
assert c.handle(cmd) is None
assert etype(sent[-1]) == (7, proto.E_AUTH) and c.stats["unauthenticated"] == 1
# a sealed frame before authentication: refused too
assert c.handle(h(V["sealed_gateway"][0])) is None and c.stats["unauthenticated"] == 2
# a replayed proof (recorded from an earlier session) without a fresh challenge
assert c.handle(h(V["proof"])) is None and c.stats["auth_failed"] == 1 and c.dropped
# locked out now: a challenge gets ERROR 7, no nonce
hw.t += 10
n = len(sent)
c.handle(h(V["challenge"]))
assert etype(sent[-1]) == (7, proto.E_AUTH) and c.stats["locked_out"] == 1
hw.t += 1000  # base lockout 1 s is over
c.handle(h(V["challenge"]))
assert etype(sent[-1]) == (8, handshake.A_RESPONSE)
# the wrong key: the gateway's proof made with another secret
bad = handshake.auth_msg(handshake.A_PROOF, [(2, handshake.hmac_sha256(b"x" * 32, b"guess"))])
c.handle(bad)
assert not c.authed and c.stats["auth_failed"] == 2
left = c.locked_until - hw.t
assert left == 2000, left  # doubled
hw.t += 2001
# a replayed challenge: the node answers with a NEW nonce, so the old proof fails
hw.nonce = b"\x99" * 16
c.handle(h(V["challenge"]))
assert cbor.loads(sent[-1])[2] == hw.nonce
c.handle(h(V["proof"]))
assert not c.authed and c.stats["auth_failed"] == 3
# a good session, then forged, replayed and truncated frames
hw.t += 10000
hw.nonce = h(V["node_nonce"])
c.handle(h(V["challenge"]))
c.handle(h(V["proof"]))
assert c.authed and c.fails == 0
g0 = h(V["sealed_gateway"][0])
assert c.handle(g0) == h(V["inner_gateway"])
assert c.handle(g0) is None and c.stats["replayed"] == 1
m = cbor.loads(h(V["sealed_gateway"][1]))
forged = auth.sealed(m[1], m[2] + b"!", m[3])
assert c.handle(forged) is None and c.stats["forged"] == 1
trunc = auth.sealed(m[1], m[2], m[3][:4])
assert c.handle(trunc) is None and c.stats["malformed"] == 1
unsealed = cbor.dumps({0: 3, 1: 5})
assert c.handle(unsealed) is None
assert c.handle(h(V["sealed_gateway"][1])) == h(V["inner_gateway"])
# enough bad frames end the session
for i in range(auth.MAX_BAD_FRAMES):
    c.handle(forged)
assert not c.authed and c.stats["auth_failed"] == 4
# no secret provisioned: refused with a hint
c2 = make()
c2.secret = None
c2.handle(h(V["challenge"]))
assert b"secret.set" in sent[-1]
print("ok")
""")
    assert out.strip() == "ok"


def test_secret_set_only_over_serial(tmp_path: Path) -> None:
    out = run_stdout(SESSION + r"""
from roadside_node import auth
class BLE:
    max_payload = 990
    window = 128
    def room(self): return True
    def send(self, p): pass
secret = "ab" * 32
s.use_port(BLE())
try:
    s.run("secret.set", {"secret": secret})
    print("accepted over BLE")
except Exception as e:
    print("refused:", e)
s.use_port(None)
r = s.run("secret.set", {"secret": secret})
print(r)
print(auth.load_secret() == bytes([0xab] * 32))
cfg = s.run("config.get", {})
print("ab" * 4 in repr(cfg))
try:
    s.run("secret.set", {"secret": "cd" * 31})   # a secret one byte short
except Exception as e:
    print("bad:", e)
for line in logs:
    print("log:", line)
""", cwd=tmp_path, heapsize="1m")
    lines = out.strip().splitlines()
    assert lines[0].startswith("refused: secret.set: refused over BLE")
    assert "fingerprint" in lines[1] and "abab" not in lines[1]
    assert lines[2] == "True" and lines[3] == "False"
    assert lines[4].startswith("bad: secret.set: secret must be 32 bytes")
    assert all(line.startswith("log: ") for line in lines[5:]), lines
    # Neither secret, the stored one nor the refused one, is in any reply, error or log line,
    # as hex or as bytes (the reply carries its fingerprint only).
    for leaked in ("abab", "\\xab\\xab", "cdcd", "\\xcd\\xcd"):
        assert leaked not in out, (leaked, out)
