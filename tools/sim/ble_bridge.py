"""Virtual BLE for simulated nodes: the firmware's real BLE code (firmware/roadside_node/ble.py
on hw/sim_bluetooth.py) drives a real bumble peripheral on a virtual controller.

    air = VirtualAir()                          # one bumble LocalLink: the "radio"
    bridge = NodeBridge(air, "F0:00:00:00:00:01")
    await bridge.start()                        # a pty for the node (config sim.ble)
    ... node runs with sim.ble = bridge.node_path ...
    central = await air.device("gateway", "C0:00:00:00:00:01")   # for the bleak backend

The pty carries the tiny RPC described in sim_bluetooth.py. Notifications are paced: each one
is sent through bumble and its connection drained before the node gets a credit back, and the
node holds at most 8 in flight (like NimBLE's buffers), so nothing queues without bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import struct
import tty
from collections.abc import Callable
from typing import Any

from bumble import gatt, hci
from bumble.controller import Controller
from bumble.device import Connection, Device
from bumble.host import Host
from bumble.link import LocalLink

log = logging.getLogger("roadside.ble_bridge")

_RPC_QUEUE = 256   # node -> bridge messages waiting; credits keep it far below this
_OUT_MAX_MSGS = 512   # bridge -> node messages the pty has not taken yet (then dropped whole)


_STEP_S = 2.0      # bound on one disconnect / power-off on the virtual controller


async def _bounded(step: Any, what: str) -> None:
    """Run a teardown step for at most _STEP_S; a failure or a hang is logged, not raised.

    Not asyncio.wait_for: on a timeout it waits for the cancelled step to finish, and a
    step stuck inside the virtual controller may never do so."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=_STEP_S)
    if not done:
        task.cancel()
        log.warning(f"ble bridge: {what} did not finish within {_STEP_S:.0f} s; going on")
    elif not task.cancelled() and task.exception() is not None:
        log.debug(f"ble bridge: {what} failed: {task.exception()!r}")


async def _disconnect(conn: Connection) -> None:
    await _bounded(conn.disconnect(), f"disconnect {conn.handle:#x}")


class VirtualAir:
    """Virtual controllers on one in-process LocalLink; each device gets its own."""

    def __init__(self) -> None:
        self.link = LocalLink()
        self.devices: list[Device] = []

    async def device(self, name: str, address: str) -> Device:
        """A powered-on bumble Device on a new controller on this air."""
        controller = Controller(name, link=self.link)
        dev = Device(name=name, address=hci.Address(address), host=Host(controller, controller))
        await dev.power_on()
        self.devices.append(dev)
        return dev

    async def close(self) -> None:
        """Power every device off (bounded: teardown must not hang on the virtual radio)."""
        for dev in self.devices:
            await _bounded(dev.power_off(), f"power off {dev.name}")


class NodeBridge:
    """One simulated node's radio: its pty end and its bumble peripheral."""

    def __init__(self, air: VirtualAir, address: str, name: str = "node") -> None:
        self.air = air
        self.address = address
        self.name = name
        self.device: Device | None = None
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.node_path = os.ttyname(self.slave)
        self._buf = bytearray()
        self._out: collections.deque[bytes] = collections.deque()   # to the node, in order
        self._writer_on = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dropped_out = 0
        self._rpc: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue(_RPC_QUEUE)
        self._task: asyncio.Task[None] | None = None
        self._chars: dict[int, gatt.Characteristic] = {}
        self._spec: Any = None
        self._conns: dict[int, Connection] = {}
        self.notifications = 0
        self.dropped_rpc = 0
        self.on_event: Callable[[str], None] | None = None   # tests: "connect", ...

    async def start(self) -> None:
        self.device = await self.air.device(self.name, self.address)
        self.device.on("connection", self._on_connection)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.master, self._readable)
        self._task = asyncio.create_task(self._serve(), name=f"ble bridge {self.name}")

    async def close(self) -> None:
        """Disconnect, power off and close the pty; every step bounded (a virtual controller
        whose peer already went away may never answer a disconnect)."""
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.master)
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_writer(self.master)
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=_STEP_S)
        for conn in list(self._conns.values()):
            await _disconnect(conn)
        if self.device is not None:
            await _bounded(self.device.stop_advertising(), f"stop advertising {self.name}")
            await _bounded(self.device.power_off(), f"power off {self.name}")
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    async def drop(self) -> None:
        """Break the connection from the node's side (a radio fade): tests, link drops."""
        for conn in list(self._conns.values()):
            await _disconnect(conn)

    # -- node -> bridge -------------------------------------------------------------------
    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, OSError):
            return
        buf = self._buf
        buf.extend(data)
        while len(buf) >= 2:
            n = buf[0] | buf[1] << 8
            if len(buf) < 2 + n:
                break
            op, body = bytes(buf[2:3]), bytes(buf[3:2 + n])
            del buf[:2 + n]
            try:
                self._rpc.put_nowait((op, body))
            except asyncio.QueueFull:
                self.dropped_rpc += 1

    def _write(self, op: bytes, body: bytes) -> None:
        """One message to the node, whole or not at all: a pty that takes only part of it
        (the node reads slower than the radio talks, e.g. during an OTA transfer on a busy
        machine) keeps the rest for later; a partial message would desynchronise its stream."""
        if len(self._out) >= _OUT_MAX_MSGS:
            self.dropped_out += 1   # the node is not reading: lost whole, like a radio's
            return
        self._out.append(struct.pack("<H", len(body) + 1) + op + body)
        self._flush()

    def _flush(self) -> None:
        out = self._out
        while out:
            head = out[0]
            try:
                n = os.write(self.master, head)
            except BlockingIOError:
                break
            except OSError:   # the pty is gone: what the node would have heard is lost
                out.clear()
                break
            if n < len(head):
                out[0] = head[n:]
                break
            out.popleft()
        waiting = bool(out)
        if waiting != self._writer_on and self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                if waiting:
                    self._loop.add_writer(self.master, self._flush)
                else:
                    self._loop.remove_writer(self.master)
            self._writer_on = waiting

    async def _serve(self) -> None:
        while True:
            op, body = await self._rpc.get()
            try:
                await self._handle(op, body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # noqa: BLE001 - one bad request must not stop the radio
                log.warning(f"ble bridge {self.name}: {op!r} failed: {exc!r}")
                if op == b"N":
                    self._write(b"K", struct.pack("<H", 1))

    async def _handle(self, op: bytes, body: bytes) -> None:
        dev = self.device
        assert dev is not None
        if op == b"N":
            conn_h, handle = struct.unpack("<HH", body[:4])
            conn = self._conns.get(conn_h)
            char = self._chars.get(handle)
            if conn is not None and char is not None:
                await dev.notify_subscriber(conn, char, body[4:])
                await conn.drain()
                self.notifications += 1
            self._write(b"K", struct.pack("<H", 1))
        elif op == b"V":
            interval_us, n = struct.unpack("<IB", body[:5])
            adv, resp = body[5:5 + n], body[5 + n:]
            if dev.is_advertising:
                await dev.stop_advertising()
            if interval_us and not self._conns:
                ms = max(20.0, interval_us / 1000)
                await dev.start_advertising(advertising_data=adv, scan_response_data=resp,
                                            advertising_interval_min=ms,
                                            advertising_interval_max=ms)
        elif op == b"R":
            spec = json.loads(body)
            if spec != self._spec:
                self._register(spec)
            for conn in list(self._conns.values()):   # a restarted node: old links are gone
                await _disconnect(conn)
        elif op == b"D":
            conn = self._conns.get(struct.unpack("<H", body)[0])
            if conn is not None:
                await _disconnect(conn)
        elif op == b"M":
            pass   # the central asks for the MTU; bumble answers up to its own maximum

    def _register(self, spec: list[Any]) -> None:
        dev = self.device
        assert dev is not None
        self._spec = spec
        for svc_uuid, chars in spec:
            made = []
            for uuid, flags, handle in chars:
                props = gatt.Characteristic.Properties(flags & 0x3E)
                perms = gatt.Characteristic.READABLE | gatt.Characteristic.WRITEABLE
                if flags & 0x0C:
                    value: Any = gatt.CharacteristicValue(write=self._writer(handle))
                else:
                    value = b""
                char = gatt.Characteristic(uuid, props, perms, value)
                self._chars[handle] = char
                made.append(char)
            dev.add_service(gatt.Service(svc_uuid, made))

    def _writer(self, handle: int) -> Callable[[Connection, bytes], None]:
        def write(conn: Connection, value: bytes) -> None:
            self._write(b"W", struct.pack("<HH", conn.handle, handle) + bytes(value))
        return write

    # -- bumble events -> node -------------------------------------------------------------
    def _on_connection(self, conn: Connection) -> None:
        h = conn.handle
        self._conns[h] = conn
        addr = bytes(conn.peer_address.address_bytes) if conn.peer_address else bytes(6)
        self._write(b"C", struct.pack("<HB", h, 0) + addr[:6])

        def on_disconnection(reason: int) -> None:
            self._conns.pop(h, None)
            self._write(b"X", struct.pack("<H", h))
            if self.on_event:
                self.on_event("disconnect")

        def on_mtu() -> None:
            self._write(b"U", struct.pack("<HH", h, conn.att_mtu))

        conn.on("disconnection", on_disconnection)
        conn.on("connection_att_mtu_update", on_mtu)
        if self.on_event:
            self.on_event("connect")
