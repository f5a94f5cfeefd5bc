"""Simulated link: an in-memory Link that a test or a benchmark feeds bytes into.

    link = SimLink("sim-1")
    await link.open()
    link.feed(protocol.encode_frame(hello))      # bytes "from the node"
    msg = await link.receive()                   # the next message the gateway sent

It goes through the same frame decoder, `incoming` queue and counters as the serial link; only
the transport is replaced by method calls. `unplug()` and `plug()` imitate a cable pulled and
put back (bytes fed while unplugged are lost, a partial frame is forgotten, `send()` drops).
"""

from __future__ import annotations

import asyncio

from .. import protocol as p
from . import base


class SimLink(base.Link):
    """One simulated node connection; `sent` holds the frames the gateway sent, in order."""

    type = "sim"

    def __init__(self, port: str = "sim") -> None:
        super().__init__(port)
        self.sent: asyncio.Queue[bytes] = asyncio.Queue()
        self.dropped_in = 0          # bytes fed while unplugged (lost, like on a real cable)
        self._node_decoder = p.FrameDecoder()
        self._inbox: list[bytes] = []

    async def open(self) -> None:
        self.state = base.OPEN

    async def close(self) -> None:
        self.state = base.CLOSED

    def send(self, frame: bytes) -> bool:
        if self.state != base.OPEN:
            return False
        self.sent.put_nowait(frame)
        self.bytes_out += len(frame)
        return True

    # -- the node's end -----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from the node (any chunking); complete frames reach the gateway."""
        if self.state != base.OPEN:
            self.dropped_in += len(data)
            return
        self.data_received(data)

    async def receive_payload(self, timeout: float | None = None) -> bytes:
        """The CBOR payload of the next frame the gateway sent (waits up to `timeout`)."""
        while not self._inbox:
            async with asyncio.timeout(timeout):
                frame = await self.sent.get()
            self._inbox.extend(self._node_decoder.feed(frame))
        return self._inbox.pop(0)

    async def receive(self, timeout: float | None = None) -> p.Message:
        """The next message the gateway sent, decoded and validated."""
        return p.decode_message(await self.receive_payload(timeout))

    def unplug(self) -> None:
        self.state = base.MISSING
        self.last_error = "unplugged"
        self.decoder.reset()

    def plug(self) -> None:
        self.state = base.OPEN
        self.last_error = None
