"""The Link interface: one API for every way a node reaches the gateway (serial now, BLE later).

A link owns its transport and its frame decoder. It puts the payload of every valid frame on
`incoming` (in arrival order) and takes ready frames through `send()`. It reconnects by itself;
`state` and `counters()` say how it is doing. Consumers never see transport exceptions.
"""

from __future__ import annotations

import abc
import asyncio

from ..protocol import FrameDecoder

# Link states shown in /status.
CLOSED = "closed"      # not started, or stopped
OPENING = "opening"
OPEN = "open"
MISSING = "missing"    # the device path does not exist (cable unplugged, wrong path)
ERROR = "error"        # the device exists but cannot be opened or failed; retrying


class Link(abc.ABC):
    """Base class: frame decoding, the incoming queue and the counters are shared here."""

    type = "link"

    def __init__(self, port: str) -> None:
        self.port = port
        self.state = CLOSED
        self.decoder = FrameDecoder()
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.malformed = 0      # frames with a good CRC that were not valid messages
        self.bytes_out = 0
        self.last_error: str | None = None
        # The only node id this link may carry (BLE: the node it authenticated; serial: the
        # `node` pinned in its [[link]]); None: learned from the first HELLO (session.py).
        self.bound_node: str | None = None

    @property
    def name(self) -> str:
        return self.port

    def data_received(self, data: bytes) -> None:
        """Feed raw bytes from the transport; complete payloads go to `incoming`."""
        for payload in self.decoder.feed(data):
            self.incoming.put_nowait(payload)

    def counters(self) -> dict[str, int]:
        c = self.decoder.counters()
        return {"frames": c["frames"], "crc": c["crc"], "cobs": c["cobs"],
                "oversize": c["oversize"], "malformed": self.malformed,
                "bytes_in": c["bytes_in"], "bytes_out": self.bytes_out}

    # Payload bytes per OTA_CHUNK on this link (PROTOCOL.md 2.6 allows 1 to 512).
    ota_chunk = 512

    @property
    def byte_rate(self) -> float | None:
        """Bytes per second the transport carries (None: not known); OTA pacing takes its
        `ota.link_share` of it (gateway/ota/transfer.py)."""
        return None

    def backlog(self) -> int:
        """Bytes (or frames) accepted by send() and not yet handed to the transport: OTA
        chunks go out only when this is 0, so they never wait in front of an ACK."""
        return 0

    @property
    def is_open(self) -> bool:
        return self.state == OPEN

    @abc.abstractmethod
    async def open(self) -> None:
        """Start the link; returns at once and keeps (re)connecting in the background."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop reconnecting and close the transport."""

    @abc.abstractmethod
    def send(self, frame: bytes) -> bool:
        """Queue one encoded frame for sending; False (dropped) when the link is not open."""
