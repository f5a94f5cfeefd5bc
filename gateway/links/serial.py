"""Serial link (USB-UART, or a pty in simulation) on pyserial-asyncio-fast.

The port may be missing at start or vanish later (a USB-UART unplugged): the link then retries
every `RETRY_S` seconds, logs the problem once (not every retry) and comes back by itself.
A link given a `UsbMatch` (usb_serial / vid_pid) looks its device path up again on every
attempt, so it finds its adapter after a replug under another /dev/ttyUSBn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import serial
import serial_asyncio_fast

from .. import logs
from . import base
from .usb import UsbMatch

log = logging.getLogger("roadside.gateway.link")

RETRY_S = 2.0


class _Protocol(asyncio.Protocol):
    def __init__(self, link: SerialLink) -> None:
        self.link = link
        self.lost = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.link.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.link.last_error = str(exc)
        self.lost.set()


class SerialLink(base.Link):
    """One serial port; frames are decoded per port."""

    type = "serial"

    def __init__(self, port: str, baudrate: int = 115200, retry_s: float = RETRY_S,
                 usb: UsbMatch | None = None, node: str | None = None) -> None:
        super().__init__(usb.name if usb is not None and not port else port)
        self.bound_node = node       # [[link]] node = "...": this port serves only that node
        self.baudrate = baudrate
        self.retry_s = retry_s
        self.usb = usb
        self.device: str | None = None if usb is not None else port   # the path opened
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._reported: str | None = None   # the last problem logged, to log each one once

    async def open(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"link {self.port}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._close_transport()
        self.state = base.CLOSED

    def send(self, frame: bytes) -> bool:
        if self._transport is None or self.state != base.OPEN:
            return False
        self._transport.write(frame)
        self.bytes_out += len(frame)
        return True

    @property
    def byte_rate(self) -> float:
        return self.baudrate / 10        # 8N1: ten bits a byte

    def backlog(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _report(self, key: str, level: int, text: str) -> None:
        if self._reported != key:
            self._reported = key
            log.log(level, text, extra=logs.fields(link=self.port, error=self.last_error))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.usb is not None:
                device, problem = self.usb.resolve()
                if device is None:
                    self.state = base.MISSING
                    self.last_error = problem
                    self._report(f"usb {problem}", logging.WARNING,
                                 f"serial link {self.port}: {problem}; check the cable and"
                                 f" usb_serial / vid_pid in gateway.toml (`roadside gateway"
                                 f" ports` lists them); retrying every {self.retry_s:g} s")
                    await asyncio.sleep(self.retry_s)
                    continue
                if device != self.device:
                    log.info(f"serial link {self.port} is {device}",
                             extra=logs.fields(link=self.port, device=device))
                self.device = device
            path = self.device or self.port
            if not os.path.exists(path):
                self.state = base.MISSING
                self.last_error = "not found"
                self._report("missing", logging.WARNING,
                             f"serial port {self.port} not found: check the cable, "
                             f"`roadside nodes`, and that the path in gateway.toml is right; "
                             f"retrying every {self.retry_s:g} s")
                await asyncio.sleep(self.retry_s)
                continue
            self.state = base.OPENING
            protocol = _Protocol(self)

            def factory(p: _Protocol = protocol) -> _Protocol:
                return p

            try:
                transport, _ = await serial_asyncio_fast.create_serial_connection(
                    loop, factory, path, baudrate=self.baudrate)
            except (serial.SerialException, OSError, ValueError) as exc:
                self.state = base.ERROR
                self.last_error = str(exc)
                self._report(f"error {exc}", logging.WARNING,
                             f"serial port {self.port} cannot be opened: {exc}; "
                             f"check permissions (dialout group) and that no other program "
                             f"uses it; retrying every {self.retry_s:g} s")
                await asyncio.sleep(self.retry_s)
                continue
            self._transport = transport
            self.state = base.OPEN
            # A leading 0x00 ends whatever partial frame the node's decoder holds.
            transport.write(b"\x00")
            self._reported = None
            self.last_error = None
            log.info(f"serial port {self.port} open at {self.baudrate} baud"
                     + (f" ({path})" if path != self.port else ""),
                     extra=logs.fields(link=self.port, device=path))
            try:
                await protocol.lost.wait()
            finally:
                self._close_transport()
            self.state = base.ERROR
            log.warning(f"serial port {self.port} lost ({self.last_error or 'closed'});"
                        f" reopening",
                        extra=logs.fields(link=self.port, error=self.last_error or "closed"))
            # A partial frame from before the loss must not be glued to new bytes.
            self.decoder.reset()
            await asyncio.sleep(min(self.retry_s, 0.5))
