"""One host-side BLE session with a node (PROTOCOL.md 5.3), written once for the gateway's
`BleLink` (gateway/links/ble.py) and the tools' `BleSerial` (tools/node/ble_transport.py).

It connects with bleak, subscribes to the node's TX notifications and reassembles them into
frames, runs the AUTH handshake (our challenge, the node's proof checked, ours sent: the math
is gateway/ble_auth.py), then seals what we send and opens what the node sends, counters and
tags checked, and writes in pieces that fit the connection's MTU. What to do with the node's
unsealed payloads, and how to report refusals, is the caller's (`on_inner`, `on_refused`).

    s = BleSession("wl-0001", secret, on_inner=handle)
    await s.connect(device, timeout=10.0)    # BleakError / TimeoutError / OSError
    await s.authenticate()                   # AuthError (`s.response`: what the node said)
    await s.write(b"".join(s.seal(frames)))  # frames as on the cable -> sealed, MTU writes
    await s.close()

A session may connect again after close(); its counters add up over its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import cbor2
from bleak import BleakClient
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError

from .. import ble_auth
from .. import protocol as p

SERVICE_UUID = "7d2a0001-3c4e-4b8a-9f1d-52e0a1b2c3d4"
RX_UUID = "7d2a0002-3c4e-4b8a-9f1d-52e0a1b2c3d4"   # we write the node's input here
TX_UUID = "7d2a0003-3c4e-4b8a-9f1d-52e0a1b2c3d4"   # the node notifies its output here

AUTH_TIMEOUT_S = 5.0
MIN_WRITE = 20           # bytes per write at the least (the smallest ATT MTU, 23, less 3)


class BleSession:
    """An authenticated, sealed BLE connection to one node: bytes in, bytes out."""

    def __init__(self, node: str, secret: bytes, on_inner: Callable[[bytes], None], *,
                 client_backend: type[BaseBleakClient] | None = None,
                 decoder: p.FrameDecoder | None = None,
                 on_refused: Callable[[str, str], None] | None = None) -> None:
        """`on_inner(payload)`: each unsealed payload from the node, in order.
        `on_refused(reason, text)`: a frame the session refused (a short reason for log
        fields, a text for the log line). `decoder`: the frame decoder of the notifications
        (a Link passes its own, for its counters)."""
        self.node = node
        self.secret = secret
        self.on_inner = on_inner
        self.on_refused = on_refused
        self.client_backend = client_backend
        self.decoder = decoder or p.FrameDecoder()
        self.client: BleakClient | None = None
        self.mtu = 23
        self.auth: ble_auth.GatewayAuth | None = None
        self.authed = False
        self.response: dict[int, Any] | None = None   # the node's answer to our challenge
        self.lost = asyncio.Event()          # the node (or the stack) dropped this connection
        self.malformed = 0                   # frames with a good CRC that were not messages
        self.unsealed = 0                    # unsealed messages that were not the handshake
        self.refused = {"replayed": 0, "forged": 0, "malformed": 0}   # sealed frames
        self.bytes_out = 0
        self._out_decoder = p.FrameDecoder()
        self._handshake: asyncio.Queue[dict[int, Any]] | None = None

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.is_connected and not self.lost.is_set()

    @property
    def room(self) -> int:
        """Bytes one write may carry on this connection."""
        return max(MIN_WRITE, self.mtu - 3)

    async def connect(self, device: BLEDevice, timeout: float) -> None:
        """Connect to `device` (BleakError, TimeoutError or OSError if not); a fresh start."""
        self.authed = False
        self.auth = None
        self.response = None
        self.decoder.reset()
        self._out_decoder.reset()
        self._handshake = asyncio.Queue(4)
        kwargs: dict[str, Any] = {}
        if self.client_backend is not None:
            kwargs["backend"] = self.client_backend
        # an Event per connection: a late callback of the last one cannot end this one
        lost = self.lost = asyncio.Event()
        client = BleakClient(device, disconnected_callback=lambda _c: lost.set(),
                             timeout=timeout, **kwargs)
        await client.connect()
        self.client = client
        self.mtu = client.mtu_size

    async def authenticate(self, timeout: float = AUTH_TIMEOUT_S) -> None:
        """Subscribe to the node's output and run AUTH: our challenge, the node's proof
        checked (ble_auth.AuthError if wrong, `response` holds what it said; TimeoutError
        if it does not answer within `timeout` s), our proof. Sealed frames flow after it."""
        client = self._client()
        self.auth = ble_auth.GatewayAuth(self.secret, self.node)
        await client.start_notify(TX_UUID, self.on_notify)
        # a leading 0x00 ends whatever partial frame the node's decoder holds
        await self.write(b"\x00" + p.encode_frame(self.auth.challenge()))
        assert self._handshake is not None
        async with asyncio.timeout(timeout):
            self.response = await self._handshake.get()
        proof = self.auth.on_response(self.response)
        await self.write(p.encode_frame(proof))
        self.authed = True

    def seal(self, frames: bytes) -> list[bytes]:
        """The frames in `frames` (COBS + CRC as on the cable; a partial one is completed by
        the next call) sealed for the node, each framed again for the air."""
        channel = self.auth.channel if self.authed and self.auth is not None else None
        if channel is None:
            raise RuntimeError(f"not authenticated with {self.node}")
        return [p.encode_frame(channel.seal(payload))
                for payload in self._out_decoder.feed(frames)]

    async def write(self, data: bytes) -> None:
        """Write `data` to the node's RX in pieces that fit the MTU (OSError if closed)."""
        client = self._client()
        n = self.room
        for i in range(0, len(data), n):
            await client.write_gatt_char(RX_UUID, data[i:i + n], response=False)
        self.bytes_out += len(data)

    async def close(self) -> None:
        """Forget the session keys and disconnect (errors of a dying link ignored)."""
        self.authed = False
        if self.auth is not None:
            self.auth.channel = None
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(BleakError, OSError, TimeoutError):
                await client.disconnect()

    def _client(self) -> BleakClient:
        if self.client is None:
            raise OSError(f"not connected to {self.node}")
        return self.client

    # -- what the node sends --------------------------------------------------------------------
    def on_notify(self, _char: Any, data: bytearray) -> None:
        """Bytes notified by the node: whole frames go on, one at a time."""
        for payload in self.decoder.feed(bytes(data)):
            try:
                self._on_payload(payload)
            except Exception as exc:  # noqa: BLE001 - nothing a node sends may stop the link
                self.malformed += 1
                self._refuse(type(exc).__name__, f"frame refused ({type(exc).__name__})")

    def _on_payload(self, payload: bytes) -> None:
        """One frame's payload: AUTH (or ERROR) during the handshake, SEALED after it."""
        try:
            msg = cbor2.loads(payload)
        except (cbor2.CBORDecodeError, ValueError, RecursionError):
            self.malformed += 1
            return
        if not isinstance(msg, dict):
            self.malformed += 1
            return
        kind = msg.get(0)
        channel = self.auth.channel if self.authed and self.auth is not None else None
        if channel is None:
            if kind in (ble_auth.AUTH, p.ERROR) and self._handshake is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    self._handshake.put_nowait(msg)
            else:
                self.unsealed += 1
            return
        if kind != ble_auth.SEALED:
            self.unsealed += 1      # nothing unsealed is believed after authentication
            return
        try:
            inner = channel.open(msg)
        except ble_auth.ChannelError as exc:
            self.refused[exc.reason] += 1
            self._refuse(exc.reason, f"{exc.reason} frame refused")
            return
        self.on_inner(inner)

    def _refuse(self, reason: str, text: str) -> None:
        if self.on_refused is not None:
            self.on_refused(reason, text)
