"""BLE for the installer tools: `scan()` lists the nodes in range, and `BleSerial` is a
serial-port-like object over an authenticated BLE session with one node, so the serial tools
(`NodeLink(port, ser=...)` in tools/node/link.py: `roadside config`, `roadside monitor`) work
over BLE unchanged.

    nodes = scan_sync(timeout=3.0)                        # [NodeAdvert], strongest first
    ser = BleSerial.open("wl-0001", secret_path)          # scan, connect, authenticate
    with NodeLink("ble:wl-0001", ser=ser) as link:
        link.command("info")

Frames read from `ser` are the node's messages, unsealed and re-framed (COBS + CRC, as on the
cable); frames written to it are sealed before they go over the air. The session itself
(connect, AUTH, sealing, MTU-sized writes) is the gateway's `BleSession`
(gateway/links/ble_session.py), the one BleLink runs. The BLE work runs on an
asyncio loop in a background thread (or on `loop=` when given: the tests' virtual radio).
`backend=` is bleak's backend injection point, set only by the tests; the command line
(`roadside config/monitor --ble`, `roadside scan`) takes both from `default_radio`, which the
tests point at their virtual radio and which is None on a real machine (bleak's own backend,
a private loop).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError
from roadside.gateway import ble_auth
from roadside.gateway import protocol as p
from roadside.gateway.links.ble import NodeAdvert, parse_advert, site_tag
from roadside.gateway.links.ble_session import AUTH_TIMEOUT_S, BleSession

from ..errors import ToolError

Backend = tuple[type, type] | None
SECRETS_DIR = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "roadside" \
    / "secrets"
READ_BUFFER = 64 * 1024      # bytes of unread node output kept; older output is dropped
FIND_TIMEOUT_S = 10.0        # how long the tools listen for the node's advertisement

# The radio the command line uses: None is bleak's backend for this OS on a private event loop.
# The tests set (backend, loop): bleak on bumble's virtual controllers (tests/support/
# bleak_bumble.py), whose objects live on the test rig's loop.
default_radio: tuple[Backend, asyncio.AbstractEventLoop | None] | None = None


class BleError(ToolError):
    """BLE could not be used: the message says what to check."""


def add_arguments(parser: Any, exclusive: Any = None, target: str = "the node") -> None:
    """--ble NODE (in the `exclusive` group with --port when given), --secret-file FILE and
    --ble-timeout S on a command's parser."""
    (exclusive or parser).add_argument(
        "--ble", metavar="NODE",
        help=f"reach {target} over Bluetooth LE by its node id (as `roadside scan` lists it),"
             " in a session authenticated with its secret")
    parser.add_argument("--secret-file", metavar="FILE",
                        help="with --ble: the node's secret (32 bytes or 64 hex digits);"
                             f" default {SECRETS_DIR}/NODE.key")
    parser.add_argument("--ble-timeout", type=float, default=FIND_TIMEOUT_S, metavar="S",
                        help="with --ble: how long to listen for the node (default %(default)g s)")


def secret_path(node: str, given: str | Path | None = None) -> Path:
    """The node's secret file: `given`, else ~/.config/roadside/secrets/NODE.key."""
    return Path(given) if given else SECRETS_DIR / f"{node}.key"


def load_secret(node: str, given: str | Path | None = None) -> tuple[Path, bytes]:
    """(path, secret) of the node's key file; BleError saying what to do when unusable."""
    path = secret_path(node, given)
    try:
        return path, ble_auth.load_secret(path)
    except ble_auth.AuthError as exc:
        cause = exc.__cause__
        if isinstance(cause, FileNotFoundError):
            where = "" if given else f" (the default for {node})"
            raise BleError(f"no key file {path}{where}: pass --secret-file FILE, or provision"
                           f" {node} over its serial port with `roadside config secret PORT`,"
                           f" which writes it there") from None
        if isinstance(cause, OSError):
            raise BleError(f"cannot read key file {path}: {cause.strerror}") from None
        raise BleError(f"key file {path} must hold 32 bytes or 64 hex digits (the secret"
                       f" written to {node} by `roadside config secret PORT`)") from None


async def scan(timeout: float = 3.0, backend: Backend = None,
               site: str | None = None) -> list[NodeAdvert]:
    """The roadside nodes heard within `timeout` s (of `site` when given), strongest first."""
    found: dict[str, NodeAdvert] = {}
    want = site_tag(site)

    def seen(device: BLEDevice, adv: Any) -> None:
        a = parse_advert(adv.local_name, adv.manufacturer_data, adv.rssi, device.address)
        if a is not None and (not want or a.site_tag in (0, want)):
            found[a.node] = a

    kwargs: dict[str, Any] = {"backend": backend[0]} if backend else {}
    try:
        scanner = BleakScanner(seen, **kwargs)
        await scanner.start()
    except (BleakError, OSError) as exc:
        raise BleError(f"cannot scan: {exc}; check that Bluetooth is on"
                       f" (`bluetoothctl power on`) and you may use it (bluetooth group)") from exc
    try:
        await asyncio.sleep(timeout)
    finally:
        with contextlib.suppress(BleakError, OSError):
            await scanner.stop()
    return sorted(found.values(), key=lambda a: -a.rssi)


def scan_sync(timeout: float = 3.0, site: str | None = None) -> list[NodeAdvert]:
    """scan() on `default_radio` (a fresh loop and bleak's backend unless the tests set it)."""
    backend, loop = default_radio or (None, None)
    if loop is None:
        return asyncio.run(scan(timeout, backend, site))
    return asyncio.run_coroutine_threadsafe(scan(timeout, backend, site), loop).result(
        timeout + 10)


class BleSerial:
    """An authenticated BLE session with one node behind read()/write()/flush()/close()."""

    def __init__(self, node: str, secret: bytes, backend: Backend = None,
                 loop: asyncio.AbstractEventLoop | None = None, timeout: float = 10.0) -> None:
        self.node = node
        self.secret = secret
        self.backend = backend
        self.timeout = timeout
        self._own_loop = loop is None
        self._loop = loop or asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        if self._own_loop:
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                            name=f"ble {node}")
            self._thread.start()
        self._lock = threading.Lock()
        self._buf: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self.dropped = 0
        self.session = BleSession(node, secret, self._on_inner,
                                  client_backend=backend[1] if backend else None)
        self.secret_file: Path | None = None   # for the error messages

    @classmethod
    def open(cls, node: str, secret_file: str | Path | None = None, *, backend: Backend = None,
             loop: asyncio.AbstractEventLoop | None = None,
             timeout: float = FIND_TIMEOUT_S) -> BleSerial:
        """Find `node` by its advertisement, connect and authenticate (BleError if not).
        `backend` and `loop` default to `default_radio`."""
        path, secret = load_secret(node, secret_file)
        if backend is None and loop is None and default_radio is not None:
            backend, loop = default_radio
        ser = cls(node, secret, backend, loop, timeout)
        ser.secret_file = path
        try:
            ser._call(ser._connect(), 2 * timeout + 10)   # find, connect, authenticate
        except TimeoutError:   # the Bluetooth stack itself hung
            ser.close()
            raise BleError(f"no answer from the Bluetooth stack while connecting to {node};"
                           f" move closer to it and retry (`bluetoothctl show`)") from None
        except BaseException:
            ser.close()
            raise
        return ser

    def _call(self, coro: Any, wait: float | None = None) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(self.timeout + 5 if wait is None else wait)

    async def _connect(self) -> None:
        found: asyncio.Future[BLEDevice] = asyncio.get_running_loop().create_future()

        def seen(device: BLEDevice, adv: Any) -> None:
            a = parse_advert(adv.local_name, adv.manufacturer_data, adv.rssi, device.address)
            if a is not None and a.node == self.node and not found.done():
                found.set_result(device)

        kw: dict[str, Any] = {"backend": self.backend[0]} if self.backend else {}
        scanner = BleakScanner(seen, **kw)
        await scanner.start()
        try:
            device = await asyncio.wait_for(found, self.timeout)
        except TimeoutError:
            raise BleError(f"node {self.node} not heard within {self.timeout:g} s: move closer"
                           f" to it and check that it is powered, with BLE on, and not connected"
                           f" to a gateway (a node takes one connection at a time; `roadside"
                           f" scan` lists the nodes in range)") from None
        finally:
            with contextlib.suppress(BleakError, OSError):
                await scanner.stop()
        try:
            await self.session.connect(device, self.timeout)
        except (BleakError, TimeoutError, OSError) as exc:
            raise BleError(f"cannot connect to {self.node}: {exc}; move closer to it and"
                           f" retry") from None
        key = f"the key file {self.secret_file}" if self.secret_file else "the key file"
        try:
            await self.session.authenticate(AUTH_TIMEOUT_S)
        except TimeoutError:
            raise BleError(f"{self.node} did not answer the AUTH challenge within"
                           f" {AUTH_TIMEOUT_S:g} s; move closer to it and retry") from None
        except ble_auth.AuthError as exc:
            raise BleError(f"authentication with {self.node} failed: "
                           + self._auth_advice(self.session.response or {}, key)) from exc

    def _auth_advice(self, response: dict[int, Any], key: str) -> str:
        """Why the handshake failed and what to check, for one line of output."""
        check = (f"check that {key} (fingerprint {ble_auth.fingerprint(self.secret)}) holds"
                 f" {self.node}'s secret, as `roadside config secret PORT` set it over the"
                 f" serial cable")
        if response.get(0) == p.ERROR:
            text = str(response.get(2))
            if "no secret" in text:
                return f"the node refused: {text}"
            return f"the node refused: {text}; {check}, then retry"
        if response.get(4) not in (None, self.node):
            return (f"the node answered as {response.get(4)!r}; check the node id and"
                    f" that no other node advertises as {self.node}")
        return f"the node does not know this secret; {check}"

    @property
    def mtu(self) -> int:
        return self.session.mtu

    @property
    def lost(self) -> bool:
        """The node (or the Bluetooth stack) dropped the connection."""
        return self.session.lost.is_set()

    def _on_inner(self, inner: bytes) -> None:
        """A payload from the node, re-framed for NodeLink's reader; the oldest output goes
        when more than READ_BUFFER bytes wait."""
        frame = p.encode_frame(inner)
        with self._lock:
            self._buf.append(frame)
            self._buffered += len(frame)
            while self._buffered > READ_BUFFER:
                self._buffered -= len(self._buf.popleft())
                self.dropped += 1

    # -- the pyserial subset NodeLink uses ----------------------------------------------------
    def read(self, n: int = 4096) -> bytes:
        with self._lock:
            out = bytearray()
            while self._buf and len(out) + len(self._buf[0]) <= max(n, len(self._buf[0])):
                f = self._buf.popleft()
                self._buffered -= len(f)
                out += f
                if len(out) >= n:
                    break
        if not out and self.lost:
            raise OSError(f"BLE connection to {self.node} lost")
        return bytes(out)

    def write(self, data: bytes) -> int:
        if not self.session.authed:
            raise OSError(f"not authenticated with {self.node}")
        sealed = b"".join(self.session.seal(bytes(data)))
        if sealed:
            try:
                self._call(self.session.write(sealed))
            except BleakError as exc:
                raise OSError(f"BLE write to {self.node} failed: {exc}") from None
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.session.client is not None:
            with contextlib.suppress(Exception):
                self._call(self.session.close())
        if self._own_loop:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(5)
            if not self._loop.is_running():
                self._loop.close()
