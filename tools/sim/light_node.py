"""A light simulated node for fleets: the node's side of the wire protocol (PROTOCOL.md 2.2) in
a few hundred bytes of state on the master end of a pty, so one process can run hundreds of
them against real gateway daemons (bench/bench_fleet.py, tests/e2e/test_fleet.py).

It is not the node's truth (that is the MicroPython twin, firmware/): no flash, no roles, one
water level record per period and an alarm with PRIORITY every `alarm_every` records. It keeps
what exactly-once needs: HELLO on start and on ERROR 3, a journal of unacked records sent
oldest first in a window of WINDOW, go-back-N when no ACK advances for ACK_TIMEOUT_S.
`made` holds when each seq was made (time.time()), for node-to-row latency.

    node = LightNode("wl-0001")
    gateway.toml: [[link]] type = "serial", port = node.path
    task = asyncio.create_task(node.run())      # node.produce = False stops making records
"""

from __future__ import annotations

import asyncio
import os
import time
import tty
from typing import Any

from roadside.gateway import protocol as p

WINDOW = p.WINDOW
ACK_TIMEOUT_S = p.ACK_TIMEOUT_S
PER_FRAME = 16                 # records per RECORDS frame (a level record is ~25 bytes)


class LightNode:
    def __init__(self, node_id: str, period: float = 1.0, alarm_every: int = 0) -> None:
        self.id = node_id
        self.period = period
        self.alarm_every = alarm_every
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.produce = True
        self.next_seq = 1
        self.acked = 0
        self.sent_upto = 0            # highest seq sent since the last go-back
        self.journal: dict[int, list[Any]] = {}
        self.made: dict[int, float] = {}
        self.session = False
        self.hellos = 0
        self.gobacks = 0
        self.write_drops = 0          # frames the pty would not take (no gateway reading)
        self._decoder = p.FrameDecoder()
        self._progress = 0.0          # monotonic time of the last ACK that advanced
        self._wake = asyncio.Event()

    @property
    def made_count(self) -> int:
        return self.next_seq - 1

    def _write(self, message: dict[int, Any]) -> None:
        try:
            os.write(self.master, p.encode_frame(message))
        except (BlockingIOError, OSError):
            self.write_drops += 1     # go-back-N resends it

    def _hello(self) -> None:
        self.hellos += 1
        self._write({0: p.HELLO, 1: self.id, 2: "water", 3: "light", 4: "sim", 5: 1,
                     6: "power_on", 7: self.next_seq, 8: p.PROTOCOL_VERSION,
                     9: self.acked + 1})

    def _make(self) -> None:
        seq = self.next_seq
        self.next_seq += 1
        now = time.time()
        self.made[seq] = now
        if self.alarm_every and seq % self.alarm_every == 0:
            rec = [seq, int(now), p.KIND_ALARM, p.FLAG_PRIORITY,
                   {1: "alert", 2: 100.0 + seq % 7, 3: "normal"}]
        else:
            rec = [seq, int(now), p.KIND_LEVEL, 0, {1: 20.0 + seq % 50 / 10, 2: 0.1,
                                                    3: 1800 - seq % 50}]
        self.journal[seq] = rec

    def _readable(self) -> None:
        try:
            chunk = os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return
        for payload in self._decoder.feed(chunk):
            try:
                msg = p.decode_message(payload)
            except Exception:
                continue
            if isinstance(msg, p.Ack):
                self.session = True
                if msg.seq > self.acked:
                    for s in range(self.acked + 1, msg.seq + 1):
                        self.journal.pop(s, None)
                    self.acked = msg.seq
                    self.sent_upto = max(self.sent_upto, self.acked)
                    self._progress = time.monotonic()
            elif isinstance(msg, p.Error) and msg.code == p.ERR_NO_SESSION:
                self.session = False
                self.sent_upto = self.acked
        self._wake.set()

    def _send(self) -> None:
        """Unacked records after sent_upto, within the window, PER_FRAME to a frame."""
        now = time.monotonic()
        if self.sent_upto > self.acked and now - self._progress > ACK_TIMEOUT_S:
            self.gobacks += 1
            self.sent_upto = self.acked
            self._progress = now
        while self.sent_upto < self.next_seq - 1 and self.sent_upto - self.acked < WINDOW:
            if self.sent_upto == self.acked:
                self._progress = now
            first = self.sent_upto + 1
            last = min(self.next_seq - 1, first + PER_FRAME - 1, self.acked + WINDOW)
            self._write({0: p.RECORDS, 1: first,
                         2: [self.journal[s] for s in range(first, last + 1)]})
            self.sent_upto = last

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.master, self._readable)
        next_make = time.monotonic() + self.period * (hash(self.id) % 1000) / 1000
        last_hello = -10.0
        try:
            while True:
                now = time.monotonic()
                if self.produce and now >= next_make:
                    self._make()
                    next_make += self.period
                    if next_make < now:           # fell behind (a busy machine): no burst
                        next_make = now + self.period
                if not self.session:
                    if now - last_hello > 1.0:
                        self._hello()
                        last_hello = now
                else:
                    self._send()
                self._wake.clear()
                timeout = max(0.0, next_make - time.monotonic()) if self.produce else 0.5
                try:
                    await asyncio.wait_for(self._wake.wait(), min(timeout, 0.5))
                except TimeoutError:
                    pass
        finally:
            loop.remove_reader(self.master)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
