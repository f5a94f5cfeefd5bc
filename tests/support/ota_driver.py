"""A host-side OTA sender for tests (PROTOCOL.md 2.6): OTA_OFFER, OTA_CHUNK with a window (4
unless told) and go-back on a repeated `have`, the ota.switch and ota.state commands, over any
link with `send(msg)` and `recv(timeout) -> msg` (the test gateway of
tests/firmware/test_session.py, bench/ota_ble_heap_probe.py's sealed BLE link). RECORDS met
on the way are ACKed, as a gateway does, so the node's session stays healthy.
The gateway's own sender is roadside.gateway's; this one is small and strict on purpose."""

from __future__ import annotations

import time
from typing import Any

from roadside.gateway.ota_bundle import CHUNK, Bundle

T_RECORDS, T_ACK, T_REPLY, T_OTA_STATE = 2, 3, 5, 12
WINDOW = 4


class OtaDriver:
    def __init__(self, link: Any, bundle: Bundle, window: int = WINDOW,
                 chunk: int = CHUNK) -> None:
        self.chunk = chunk  # payload bytes per OTA_CHUNK
        self.link = link
        self.bundle = bundle
        self.window = window  # chunks in flight
        self.states: list[dict] = []  # every OTA_STATE seen, in order
        self.replies: list[dict] = []
        self.req = 1000
        self.chunks_sent = 0

    # -- receiving ---------------------------------------------------------------------------
    def _next(self, timeout: float) -> dict | None:
        """The next OTA_STATE or REPLY within timeout (RECORDS ACKed on the way), else None."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                m = self.link.recv(left)
            except AssertionError:  # nothing within the time
                return None
            if m[0] == T_RECORDS and m[2]:
                self.link.send({0: T_ACK, 1: m[2][-1][0]})
            elif m[0] == T_OTA_STATE:
                self.states.append(m)
                return m
            elif m[0] == T_REPLY:
                self.replies.append(m)
                return m

    def state(self, timeout: float = 5.0) -> dict:
        """The next OTA_STATE."""
        deadline = time.monotonic() + timeout
        while True:
            m = self._next(max(0.0, deadline - time.monotonic()))
            if m is None:
                raise AssertionError(f"no OTA_STATE within {timeout} s; seen {self.states}")
            if m[0] == T_OTA_STATE:
                return m

    def command(self, name: str, args: dict | None = None, timeout: float = 10.0) -> dict:
        """Send a COMMAND; its REPLY (OTA_STATEs on the way are kept in self.states)."""
        self.req += 1
        msg: dict = {0: 4, 1: self.req, 2: name}
        if args is not None:
            msg[3] = args
        self.link.send(msg)
        deadline = time.monotonic() + timeout
        while True:
            m = self._next(max(0.0, deadline - time.monotonic()))
            if m is None:
                raise AssertionError(f"no reply to {name} within {timeout} s")
            if m[0] == T_REPLY and m[1] == self.req:
                return m

    # -- sending -----------------------------------------------------------------------------
    def offer(self, force: bool = False) -> dict:
        self.link.send(self.bundle.offer(force))
        return self.state()

    def push(self, start: int, stop_at: int | None = None, timeout: float = 60.0) -> dict:
        """Chunks from `start` until the node says staged (or refused, or its `have` reaches
        stop_at): the last OTA_STATE."""
        size = len(self.bundle.payload)
        have = nxt = start
        last_have = -1
        deadline = time.monotonic() + timeout
        while True:
            while nxt < size and nxt - have < self.window * self.chunk:
                self.link.send(self.bundle.chunk(nxt, self.chunk))
                self.chunks_sent += 1
                nxt = min(size, nxt + self.chunk)
            m = self._next(1.0)
            if time.monotonic() > deadline:
                raise AssertionError(f"transfer not done within {timeout} s; {self.states[-3:]}")
            if m is None:  # nothing back: resend from where the node last said it is
                nxt = have
                continue
            if m[0] != T_OTA_STATE:
                continue
            if m[2] != "receiving":
                return m
            if m[3] == last_have and nxt > m[3]:
                nxt = m[3]  # the same have again: a chunk was ignored, go back
            have = last_have = m[3]
            if stop_at is not None and have >= stop_at:
                return m

    def transfer(self, force: bool = False) -> dict:
        """Offer, then push from the node's `have` to the end: the final OTA_STATE."""
        st = self.offer(force)
        if st[2] != "receiving":
            return st
        return self.push(st[3])

    def switch(self) -> dict:
        return self.command("ota.switch", {"tag": self.bundle.tag})
