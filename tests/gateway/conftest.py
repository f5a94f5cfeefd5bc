"""Fixtures for the gateway tests: real ptys, a real receiver process, free loopback ports."""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from roadside.gateway import protocol as p


class FakeNode:
    """The node end of a pty pair, written in the test: sends messages, reads frames back."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.decoder = p.FrameDecoder()
        self.inbox: list[p.Message] = []

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def send(self, message: dict[int, Any] | p.Message) -> None:
        self.write(p.encode_frame(message))

    def hello(self, node: str = "wl-0001", next_seq: int = 1, first_unacked: int = 1) -> None:
        self.send({0: p.HELLO, 1: node, 2: "water", 3: "test", 4: "sim", 5: 1, 6: "power_on",
                   7: next_seq, 8: 1, 9: first_unacked})

    def records(self, seqs: list[int], from_seq: int | None = None,
                kind: int = p.KIND_LEVEL, flags: int = 0) -> None:
        recs = [[s, 1_700_000_000 + s, kind, flags, {1: 10.0 + s, 2: 0.5, 3: 1000 + s}]
                for s in seqs]
        self.send({0: p.RECORDS, 1: from_seq if from_seq is not None else seqs[0], 2: recs})

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except (BlockingIOError, OSError):
                return
            if not chunk:
                return
            for payload in self.decoder.feed(chunk):
                self.inbox.append(p.decode_message(payload))

    async def expect(self, cls: type, timeout: float = 5.0, **fields: Any) -> Any:
        """Wait for the next message of type `cls` whose fields match; earlier ones are kept."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._drain()
            for i, m in enumerate(self.inbox):
                if isinstance(m, cls) and all(getattr(m, k) == v for k, v in fields.items()):
                    del self.inbox[: i + 1]
                    return m
            if loop.time() > deadline:
                raise AssertionError(f"no {cls.__name__} {fields} within {timeout} s;"
                                     f" got {self.inbox}")
            await asyncio.sleep(0.01)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def fake_node() -> Iterator[FakeNode]:
    node = FakeNode()
    try:
        yield node
    finally:
        node.close()


@pytest.fixture
def fake_nodes() -> Iterator[Callable[[int], list[FakeNode]]]:
    """fake_nodes(n): n more node ends on their own ptys, closed after the test."""
    made: list[FakeNode] = []

    def make(n: int) -> list[FakeNode]:
        nodes = [FakeNode() for _ in range(n)]
        made.extend(nodes)
        return nodes

    try:
        yield make
    finally:
        for node in made:
            node.close()
