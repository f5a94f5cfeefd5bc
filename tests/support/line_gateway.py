"""A small gateway for stress rigs: speaks the real wire protocol (roadside.gateway.protocol) on
the gateway end of a virtual cable, and can be told to answer busy or to withhold ACKs.

It keeps what a real gateway keeps for one node (records by seq, the contiguous ACK point,
records beyond a gap held until the gap fills) and timestamps every first arrival, so a rig
can measure delivery latency. Used by tests/e2e/test_line_stress.py and bench/bench_noise.py.
"""

from __future__ import annotations

import asyncio
import os
import termios
import time
import tty

from roadside.gateway import protocol as gp

ANSWER = "answer"      # TIME + ACK to HELLO, ACK to RECORDS (a healthy gateway)
BUSY = "busy"          # ERROR 6 (busy) to every RECORDS, like a gateway whose queue is full
SILENT = "silent"      # read everything, answer nothing (ACKs withheld)


class LineGateway:
    def __init__(self, path: str) -> None:
        self.path = path
        self.mode = ANSWER
        self.dec = gp.FrameDecoder()
        self.records: dict[int, gp.Record] = {}
        # seq -> time.monotonic() it became deliverable: stored with every seq below it (a
        # record beyond a gap waits in a real gateway's queue until the gap is filled)
        self.arrived: dict[int, float] = {}
        self.frames: list[tuple[float, int]] = []  # (time.monotonic(), records) per RECORDS
        self.acked = 0
        self.hellos = 0
        self.records_frames = 0
        self.busy_sent = 0
        self.bytes_in = 0
        self.changed = asyncio.Event()  # set whenever new records arrive
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd, termios.TCSANOW)
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)

    def close(self) -> None:
        if self._fd is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = None

    def _send(self, frame: bytes) -> None:
        assert self._fd is not None
        view = memoryview(frame)
        while view:
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                time.sleep(0.001)  # a pty's buffer is large; this is rare and short
                continue
            view = view[n:]

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd or -1, 4096)
        except (BlockingIOError, OSError):
            return
        self.bytes_in += len(chunk)
        for payload in self.dec.feed(chunk):
            try:
                msg = gp.decode_message(payload)
            except gp.ProtocolError:
                continue
            self._on_message(msg)

    def _on_message(self, msg: gp.Message) -> None:
        if isinstance(msg, gp.Hello):
            self.hellos += 1
            if self.mode == SILENT:
                return
            self._send(gp.encode_frame(gp.Time(int(time.time() * 1000))))
            self._send(gp.encode_frame(gp.Ack(self.acked)))
        elif isinstance(msg, gp.Records):
            self.records_frames += 1
            now = time.monotonic()
            self.frames.append((now, len(msg.records)))
            new = False
            if self.mode != BUSY:  # busy: nothing stored
                for rec in msg.records:
                    if rec.seq not in self.records:
                        self.records[rec.seq] = rec
                        new = True
                self.acked = max(self.acked, msg.from_seq - 1)
                while self.acked + 1 in self.records:
                    self.acked += 1
                    self.arrived[self.acked] = now
            if new:
                self.changed.set()
            if self.mode == BUSY:
                self.busy_sent += 1
                self._send(gp.error_frame(gp.ERR_BUSY, "gateway queue full", gp.RECORDS))
            elif self.mode == ANSWER:
                self._send(gp.encode_frame(gp.Ack(self.acked)))

    async def wait_for(self, predicate, timeout: float, what: str) -> None:
        """Wait (event-driven) until predicate() holds; AssertionError after timeout."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
            except TimeoutError:
                pass


class LogWatcher:
    """Timestamps the node's "seq N ..." log lines as they are written (polled every 20 ms),
    so a rig can tell when each record was journaled: `journaled[seq]`, `alarms` (seqs)."""

    def __init__(self, path) -> None:
        self.path = path
        self.journaled: dict[int, float] = {}
        self.alarms: list[int] = []
        self.memory_errors = 0
        self._pos = 0
        self._tail = b""
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.poll()

    async def _run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(0.02)

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return
        self._pos += len(data)
        now = time.monotonic()
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            if b"MemoryError" in line:
                self.memory_errors += 1
            parts = line.split()
            if len(parts) >= 3 and parts[0] == b"seq" and parts[1].isdigit():
                seq = int(parts[1])
                self.journaled.setdefault(seq, now)
                if parts[2] == b"alarm":
                    self.alarms.append(seq)

    @property
    def produced(self) -> int:
        return max(self.journaled, default=0)
