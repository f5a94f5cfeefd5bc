"""BLE links on bleak: one `BleLink` per configured node, all sharing one `BleCentral`.

The central scans all the time (restarting the scan if it goes quiet), keeps the newest
advertisement of each node (PROTOCOL.md 5.1: node id, role, status, site tag, RSSI) and hands
out at most `max_connections` connection slots. A link waits for its node's advertisement,
takes a slot, and runs a `BleSession` (ble_session.py, shared with the tools: connect,
authenticate with the node's secret, PROTOCOL.md 5.3, SEALED frames both ways in MTU-sized
writes): what comes in goes to `incoming` unsealed, so the SessionManager sees the same
payloads as from a serial link. When the connection drops it reconnects with exponential
backoff; when other nodes wait for a slot, a link connected for `hold_s` and idle gives its
slot up (rotation, for battery nodes that wake, report, sleep).

`scanner_backend` / `client_backend` are bleak's `backend=` injection points; only the tests
set them (tests/support/bleak_bumble.py runs bleak on bumble's virtual controllers).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bleak import BleakScanner
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from .. import ble_auth, logs, roles
from . import base
from .ble_session import AUTH_TIMEOUT_S, RX_UUID, SERVICE_UUID, TX_UUID, BleSession

__all__ = ["RX_UUID", "SERVICE_UUID", "TX_UUID", "BleCentral", "BleLink", "NodeAdvert",
           "make_ble_links", "parse_advert", "site_tag"]

log = logging.getLogger("roadside.gateway.link")

COMPANY_ID = 0xFFFF
MAGIC = b"RS"
ROLES = {r.ble_code: r.name for r in roles.ROLES}  # advertisement byte 3 (gateway/roles.py)
ADV_ALARM, ADV_SAFE_MODE, ADV_BATTERY, ADV_NO_SECRET = 1, 2, 4, 8

OUT_FRAMES = 64          # frames waiting to be written to one node; more are dropped
STALE_S = 5.0            # an advertisement older than this does not start a connection
CONNECT_TIMEOUT_S = 10.0
IDLE_S = 2.0             # nothing received for this long: the node may be rotated out
# The link's byte rate (OTA pacing, gateway/ota/transfer.py): bleak tells the ATT MTU but not
# the connection interval the central chose, so the estimate is one write of MTU - 3 bytes per
# CONN_INTERVAL_S, the longest interval BlueZ asks for by default (MaxConnectionInterval 50
# ms); controllers that fit more packets in a connection event do better, none does worse at
# that interval. Writes timed while frames wait behind them (the stack holding us back)
# measure the link; their rate, once RATE_MIN_BYTES were timed, lowers the estimate when the
# link is slower (a longer interval, a noisy channel). Sealing's overhead is taken off.
CONN_INTERVAL_S = 0.05
RATE_MIN_BYTES = 4096
RATE_WINDOW_BYTES = 32768  # the measurement forgets older writes beyond this many bytes


def site_tag(site: str | None) -> int:
    """The two bytes naming a site in advertisements (same as the firmware's ble.site_tag)."""
    if not site:
        return 0
    d = hashlib.sha256(site.encode()).digest()
    return (d[0] << 8 | d[1]) or 1


@dataclass
class NodeAdvert:
    """What one advertisement says about a node (PROTOCOL.md 5.1)."""

    node: str
    role: str
    flags: int
    battery: int | None      # percent, None when mains powered or unknown
    site_tag: int
    rssi: int
    address: str
    seen: float              # monotonic

    @property
    def alarm(self) -> bool:
        return bool(self.flags & ADV_ALARM)

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "role": self.role, "address": self.address,
                "rssi": self.rssi, "alarm": self.alarm,
                "safe_mode": bool(self.flags & ADV_SAFE_MODE),
                "battery_powered": bool(self.flags & ADV_BATTERY),
                "battery_pct": self.battery, "provisioned": not self.flags & ADV_NO_SECRET,
                "site_tag": f"{self.site_tag:04x}"}


def parse_advert(name: str | None, manufacturer_data: dict[int, bytes], rssi: int,
                 address: str) -> NodeAdvert | None:
    """A roadside node's advertisement, or None for anything else in the air."""
    data = manufacturer_data.get(COMPANY_ID)
    if data is None or len(data) < 8 or data[:2] != MAGIC or data[2] != 1 or not name:
        return None
    role, flags, battery = data[3], data[4], data[5]
    (tag,) = struct.unpack(">H", data[6:8])
    return NodeAdvert(name, ROLES.get(role, f"role{role}"), flags,
                      None if battery > 100 else battery, tag, rssi, address,
                      time.monotonic())


class BleCentral:
    """The gateway's BLE adapter: one scanner, advertisements by node, connection slots."""

    def __init__(self, site: str | None = None, max_connections: int = 4, hold_s: float = 30.0,
                 scanner_backend: type[BaseBleakScanner] | None = None,
                 client_backend: type[BaseBleakClient] | None = None,
                 scan_restart_s: float = 30.0) -> None:
        self.site_tag = site_tag(site)
        self.max_connections = max_connections
        self.hold_s = hold_s
        self.scanner_backend = scanner_backend
        self.client_backend = client_backend
        self.scan_restart_s = scan_restart_s
        self.adverts: dict[str, NodeAdvert] = {}
        self.devices: dict[str, BLEDevice] = {}
        self.waiting = 0                # links waiting for a slot (rotation asks for one)
        self.scan_restarts = 0
        self.other_site = 0             # roadside adverts of another site, ignored
        self._sem = asyncio.Semaphore(max_connections)
        self._seen: dict[str, asyncio.Event] = {}
        self._users = 0
        self._scanner: BleakScanner | None = None
        self._watch: asyncio.Task[None] | None = None
        self._last_adv = time.monotonic()

    # -- scanning -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start scanning (reference counted: every link calls it)."""
        self._users += 1
        if self._users == 1:
            await self._start_scanner()
            self._watch = asyncio.create_task(self._watchdog(), name="ble scan watchdog")

    async def stop(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users:
            return
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await self._stop_scanner()

    async def _start_scanner(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.scanner_backend is not None:
            kwargs["backend"] = self.scanner_backend
        self._scanner = BleakScanner(self._on_adv, **kwargs)
        await self._scanner.start()
        self._last_adv = time.monotonic()

    async def _stop_scanner(self) -> None:
        if self._scanner is not None:
            with contextlib.suppress(BleakError, OSError):
                await self._scanner.stop()
            self._scanner = None

    async def _watchdog(self) -> None:
        """Scanning that silently dies is a known failure: restart it when the air is quiet."""
        while True:
            await asyncio.sleep(max(1.0, self.scan_restart_s / 3))
            if time.monotonic() - self._last_adv > self.scan_restart_s:
                self.scan_restarts += 1
                log.warning(f"BLE scan heard nothing for {self.scan_restart_s:g} s;"
                            f" restarting it (restart {self.scan_restarts})")
                try:
                    await self._stop_scanner()
                    await self._start_scanner()
                except (BleakError, OSError) as exc:
                    log.warning(f"BLE scan restart failed: {exc}; check the adapter"
                                f" (`bluetoothctl show`); retrying")

    def _on_adv(self, device: BLEDevice, adv: AdvertisementData) -> None:
        self._last_adv = time.monotonic()
        a = parse_advert(adv.local_name, adv.manufacturer_data, adv.rssi, device.address)
        if a is None:
            return
        if self.site_tag and a.site_tag and a.site_tag != self.site_tag:
            self.other_site += 1
            return
        self.adverts[a.node] = a
        self.devices[a.node] = device
        ev = self._seen.get(a.node)
        if ev is not None:
            ev.set()

    def forget(self, node: str) -> None:
        """The node disconnected: only a new advertisement may start the next connection."""
        self.devices.pop(node, None)
        a = self.adverts.get(node)
        if a is not None:
            a.seen = 0.0

    async def wait_for(self, node: str, address: str | None = None) -> BLEDevice:
        """The node's device once it advertises (fresh, from `address` if given)."""
        ev = self._seen.setdefault(node, asyncio.Event())
        while True:
            a = self.adverts.get(node)
            if (a is not None and node in self.devices
                    and time.monotonic() - a.seen < STALE_S
                    and (address is None or a.address.upper() == address.upper())):
                return self.devices[node]
            ev.clear()
            await ev.wait()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of `max_connections` connection slots, held for the block."""
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._sem.release()


class BleLink(base.Link):
    """One node over BLE, authenticated with its secret; a Link like the serial one."""

    type = "ble"
    # Smaller chunks than serial: each chunk is copied a few times on the node (the frame, the
    # sealed message, its data) and a BLE node's heap is the shortest (the BLE stack's buffers
    # and auth.py); 192-byte copies fit the pieces its heap is in after thousands of chunks
    # where 512-byte ones did not (docs/PERFORMANCE.md "OTA over BLE: the heap it needs").
    ota_chunk = 192

    def __init__(self, node: str, secret: bytes | str | Path, central: BleCentral,
                 address: str | None = None, retry_s: float = 1.0,
                 retry_max_s: float = 60.0) -> None:
        super().__init__(f"ble:{node}")
        self.node = node
        self.bound_node = node       # an authenticated link serves this node only
        self.secret = secret if isinstance(secret, bytes) else ble_auth.load_secret(secret)
        self.central = central
        self.address = address
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.device: str | None = address
        self.rssi: int | None = None
        self.connects = 0
        self.reconnects = 0
        self.rotations = 0
        self.auth_ok = 0
        self.auth_failures = 0
        self.dropped_out = 0
        # one session, connected again after each drop; its counters add up
        self.session = BleSession(node, self.secret, self._on_inner,
                                  client_backend=central.client_backend,
                                  decoder=self.decoder, on_refused=self._on_refused)
        self._out: asyncio.Queue[bytes] = asyncio.Queue(OUT_FRAMES)
        self.frame_bytes = 0          # bytes of frames given to send(), before sealing
        self.sealed_bytes = 0         # ... and what they became sealed for the air
        self.timed_bytes = 0.0        # bytes written while others waited, and their seconds
        self.timed_s = 0.0
        self._task: asyncio.Task[None] | None = None
        self._last_rx = 0.0
        self._reported: str | None = None

    @property
    def mtu(self) -> int:
        return self.session.mtu

    @property
    def byte_rate(self) -> float:
        """Frame bytes per second this link carries (before sealing): the MTU's estimate,
        lowered to the measured write rate when that is slower (CONN_INTERVAL_S above)."""
        rate = self.session.room / CONN_INTERVAL_S
        if self.timed_bytes >= RATE_MIN_BYTES and self.timed_s > 0:
            rate = min(rate, self.timed_bytes / self.timed_s)
        if self.sealed_bytes:
            rate *= self.frame_bytes / self.sealed_bytes
        return rate

    def timed_write(self, nbytes: int, seconds: float) -> None:
        """A write of `nbytes` that took `seconds` while other frames waited behind it."""
        self.timed_bytes += nbytes
        self.timed_s += seconds
        if self.timed_bytes > RATE_WINDOW_BYTES:     # keep the newest: scale both down
            k = RATE_WINDOW_BYTES / self.timed_bytes
            self.timed_bytes *= k
            self.timed_s *= k

    # -- Link API -----------------------------------------------------------------------------
    async def open(self) -> None:
        if self._task is None:
            await self.central.start()
            self._task = asyncio.create_task(self._run(), name=f"link {self.port}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            await self.central.stop()
        self.state = base.CLOSED

    def send(self, frame: bytes) -> bool:
        if not self.session.authed:
            return False
        ok = True
        for sealed in self.session.seal(frame):
            try:
                self._out.put_nowait(sealed)
            except asyncio.QueueFull:
                self.dropped_out += 1
                ok = False
            self.sealed_bytes += len(sealed)
        self.frame_bytes += len(frame)
        return ok

    def backlog(self) -> int:
        return self._out.qsize()

    def counters(self) -> dict[str, int]:
        c = super().counters()
        s = self.session
        c.update({"malformed": self.malformed + s.malformed, "bytes_out": s.bytes_out,
                  "rssi": self.rssi if self.rssi is not None else 0, "mtu": self.mtu,
                  "connects": self.connects, "reconnects": self.reconnects,
                  "rotations": self.rotations, "auth_ok": self.auth_ok,
                  "auth_failures": self.auth_failures, "replayed": s.refused["replayed"],
                  "forged": s.refused["forged"], "sealed_malformed": s.refused["malformed"],
                  "unsealed": s.unsealed, "dropped_out": self.dropped_out})
        return c

    # -- the connection loop -------------------------------------------------------------------
    def _report(self, key: str, level: int, text: str) -> None:
        if self._reported != key:
            self._reported = key
            log.log(level, text)

    async def _run(self) -> None:
        delay = self.retry_s
        while True:
            self.state = base.MISSING
            self.last_error = "not in range"
            device = await self.central.wait_for(self.node, self.address)
            adv = self.central.adverts.get(self.node)
            if adv is not None:
                self.rssi, self.device = adv.rssi, adv.address
            async with self.central.slot():
                self.state = base.OPENING
                authed = await self._session(device)
            self.central.forget(self.node)
            if authed:
                self.reconnects += 1
                delay = self.retry_s
            else:
                delay = min(delay * 2, self.retry_max_s)
            self.state = base.ERROR
            await asyncio.sleep(delay)

    async def _session(self, device: BLEDevice) -> bool:
        """One connection: connect, authenticate, carry frames until it ends. True when the
        node authenticated (a later drop then reconnects without backoff)."""
        s = self.session
        try:
            await s.connect(device, CONNECT_TIMEOUT_S)
        except (BleakError, TimeoutError, OSError) as exc:
            self.last_error = str(exc)
            self._report(f"connect {exc}", logging.WARNING,
                         f"BLE link {self.node}: cannot connect ({exc}); check the node is"
                         f" powered and in range (`roadside scan`); retrying with backoff")
            return False
        self.connects += 1
        writer: asyncio.Task[None] | None = None
        try:
            while not self._out.empty():
                self._out.get_nowait()
            try:
                await s.authenticate(AUTH_TIMEOUT_S)
            except (ble_auth.AuthError, TimeoutError) as exc:
                self.auth_failures += 1
                text = str(exc) or "no AUTH response"
                self.last_error = f"auth: {text}"
                self._report(f"auth {text}", logging.WARNING,
                             f"BLE link {self.node}: authentication failed: {text}")
                return False
            writer = asyncio.create_task(self._writer(), name=f"ble writer {self.node}")
            self.auth_ok += 1
            self.state = base.OPEN
            self.last_error = None
            self._reported = None
            self._last_rx = time.monotonic()
            since = time.monotonic()
            log.info(f"BLE link {self.node} open ({self.device}, mtu {self.mtu},"
                     f" rssi {self.rssi}); authenticated",
                     extra=logs.fields(link=self.port, node=self.node, rssi=self.rssi))
            while s.connected:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await s.lost.wait()
                now = time.monotonic()
                if (self.central.waiting and now - since >= self.central.hold_s
                        and now - self._last_rx >= IDLE_S):
                    self.rotations += 1
                    log.info(f"BLE link {self.node}: giving the slot to a waiting node",
                             extra=logs.fields(link=self.port, node=self.node))
                    break
            if s.lost.is_set():
                log.warning(f"BLE link {self.node} lost; reconnecting",
                            extra=logs.fields(link=self.port, node=self.node, error="lost"))
            return True
        except (BleakError, OSError) as exc:
            self.last_error = str(exc)
            log.warning(f"BLE link {self.node}: {exc}; reconnecting",
                        extra=logs.fields(link=self.port, node=self.node, error=str(exc)))
            return s.authed
        finally:
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, BleakError, OSError):
                    await writer
            await s.close()

    async def _writer(self) -> None:
        """Write the queued frames; frames queued together (the ACKs of one group commit, a
        TIME and an ACK) go in one write when they fit, not one write each."""
        while True:
            data = await self._out.get()
            while not self._out.empty() and len(data) < self.session.room:
                data += self._out.get_nowait()
            t0 = time.monotonic()
            await self.session.write(data)
            if not self._out.empty():       # frames waited behind it: the link's own pace
                self.timed_write(len(data), time.monotonic() - t0)

    def _on_inner(self, payload: bytes) -> None:
        """An unsealed payload from the node: to the SessionManager."""
        self._last_rx = time.monotonic()
        self.incoming.put_nowait(payload)

    def _on_refused(self, reason: str, text: str) -> None:
        log.warning(f"BLE link {self.node}: {text}",
                    extra=logs.fields(link=self.port, node=self.node, error=reason))


Backend = tuple[type[BaseBleakScanner], type[BaseBleakClient]]


def make_ble_links(specs: list[tuple[str, str | None, Path]], site: str | None,
                   max_connections: int = 4, hold_s: float = 30.0,
                   backend: Backend | None = None) -> list[BleLink]:
    """BleLinks for (node, address, secret file) specs, sharing one BleCentral."""
    central = BleCentral(site, max_connections, hold_s,
                         scanner_backend=backend[0] if backend else None,
                         client_backend=backend[1] if backend else None)
    return [BleLink(node, secret, central, address) for node, address, secret in specs]

