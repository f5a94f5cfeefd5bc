"""A bleak backend on bumble's virtual controllers, so the gateway's unchanged bleak code runs
without radios or BlueZ.

    air = VirtualAir()                              # tools/sim/ble_bridge.py
    backend = await BumbleBackend.create(air)       # one central (the gateway's "adapter")
    BleakScanner(callback, backend=backend.scanner) # bleak's own classes on top
    BleakClient(device, backend=backend.client)

`backend.scanner` and `backend.client` are BaseBleakScanner / BaseBleakClient subclasses bound
to one bumble Device acting as the central: every scanner shares its advertisements, every
client connects through it (one connect at a time, as a controller allows).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError
from bumble import hci
from bumble.core import AdvertisingData
from bumble.device import Advertisement, Connection, Device, Peer
from roadside.tools.sim.ble_bridge import VirtualAir

_PROPS = ((0x02, "read"), (0x04, "write-without-response"), (0x08, "write"),
          (0x10, "notify"), (0x20, "indicate"))


class _Central:
    """The shared state of one virtual adapter: its Device, scan refcount, connect lock."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.scanners = 0
        self.connect_lock = asyncio.Lock()
        self.listeners: set[Callable[[Advertisement], None]] = set()
        device.on("advertisement", self._on_adv)

    def _on_adv(self, adv: Advertisement) -> None:
        for cb in list(self.listeners):
            cb(adv)


class BumbleBackend:
    """A (scanner, client) pair of bleak backend classes bound to one virtual central."""

    def __init__(self, central: _Central) -> None:
        self.central = central
        self.scanner: type[BaseBleakScanner] = type(
            "BumbleScanner", (BumbleScanner,), {"central": central})
        self.client: type[BaseBleakClient] = type(
            "BumbleClient", (BumbleClient,), {"central": central})

    @classmethod
    async def create(cls, air: VirtualAir, address: str = "C0:00:00:00:00:01",
                     name: str = "gateway") -> BumbleBackend:
        return cls(_Central(await air.device(name, address)))


def _adv_data(adv: Advertisement) -> AdvertisementData:
    d = adv.data
    name = d.get(AdvertisingData.COMPLETE_LOCAL_NAME) or d.get(
        AdvertisingData.SHORTENED_LOCAL_NAME)
    mfr: dict[int, bytes] = {}
    for company, data in d.get_all(AdvertisingData.MANUFACTURER_SPECIFIC_DATA):
        mfr[company] = bytes(data)
    lists = (AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
             AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS)
    uuids = [str(u).lower() for key in lists for lst in d.get_all(key) for u in lst]
    tx = d.get(AdvertisingData.TX_POWER_LEVEL)
    return AdvertisementData(local_name=name if isinstance(name, str) else None,
                             manufacturer_data=mfr, service_data={}, service_uuids=uuids,
                             tx_power=tx if isinstance(tx, int) else None, rssi=adv.rssi,
                             platform_data=(adv,))


class BumbleScanner(BaseBleakScanner):
    central: _Central

    def __init__(self, detection_callback: Any, service_uuids: list[str] | None,
                 scanning_mode: str = "active", **kwargs: Any) -> None:
        super().__init__(detection_callback, service_uuids)
        self._scanning = False

    def _on_adv(self, adv: Advertisement) -> None:
        data = _adv_data(adv)
        if not self.is_allowed_uuid(data.service_uuids):
            return
        addr = str(adv.address).split("/")[0]
        device = self.create_or_update_device(addr, addr, data.local_name, adv.address, data)
        self.call_detection_callbacks(device, data)

    async def start(self) -> None:
        self.seen_devices = {}
        c = self.central
        c.listeners.add(self._on_adv)
        self._scanning = True
        c.scanners += 1
        if not c.device.scanning:
            await c.device.start_scanning(filter_duplicates=False)

    async def stop(self) -> None:
        if not self._scanning:
            return
        self._scanning = False
        c = self.central
        c.listeners.discard(self._on_adv)
        c.scanners -= 1
        if c.scanners == 0 and c.device.scanning:
            await c.device.stop_scanning()


class BumbleClient(BaseBleakClient):
    central: _Central

    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(address_or_ble_device,
                         disconnected_callback=kwargs.get("disconnected_callback"),
                         timeout=kwargs.get("timeout", 10.0))
        self._conn: Connection | None = None
        self._peer: Peer | None = None
        self._mtu = 23
        self._closing = False

    @property
    def name(self) -> str:
        return self.address

    @property
    def mtu_size(self) -> int:
        return self._mtu

    @property
    def is_connected(self) -> bool:
        return self._conn is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        c = self.central
        self._closing = False
        try:
            async with c.connect_lock:
                conn = await c.device.connect(hci.Address(self.address), timeout=self._timeout)
        except Exception as exc:   # noqa: BLE001 - bleak callers expect BleakError
            raise BleakError(f"connect to {self.address} failed: {exc!r}") from exc
        self._conn = conn

        def on_disconnection(reason: int) -> None:
            self._conn = None
            self._peer = None
            if self._disconnected_callback is not None and not self._closing:
                self._disconnected_callback()

        conn.on("disconnection", on_disconnection)
        peer = Peer(conn)
        self._peer = peer
        try:
            self._mtu = await peer.request_mtu(247)
            await peer.discover_services()
            coll = BleakGATTServiceCollection()
            for svc in peer.services:
                await svc.discover_characteristics()
                bsvc = BleakGATTService(svc, svc.handle, str(svc.uuid).lower())
                coll.add_service(bsvc)
                for ch in svc.characteristics:
                    props = [n for bit, n in _PROPS if ch.properties & bit]
                    bch = BleakGATTCharacteristic(ch, ch.handle, str(ch.uuid).lower(), props,
                                                  lambda: self._mtu - 3, bsvc)
                    coll.add_characteristic(bch)
            self.services = coll
        except Exception as exc:   # noqa: BLE001
            with contextlib.suppress(Exception):
                await conn.disconnect()
            raise BleakError(f"GATT set-up with {self.address} failed: {exc!r}") from exc

    async def disconnect(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._closing = True
        done = asyncio.Event()
        conn.on("disconnection", lambda reason: done.set())
        with contextlib.suppress(Exception):
            await conn.disconnect()
            await asyncio.wait_for(done.wait(), 5)
        self._conn = None

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("the virtual backend does not pair")

    async def unpair(self) -> None:
        raise NotImplementedError("the virtual backend does not pair")

    def _need(self) -> Peer:
        if self._peer is None:
            raise BleakError("not connected")
        return self._peer

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, *,
                             use_cached: bool = False, **kwargs: Any) -> bytearray:
        return bytearray(await self._need().read_value(characteristic.obj))

    async def read_gatt_descriptor(self, descriptor: BleakGATTDescriptor, *,
                                   use_cached: bool = False, **kwargs: Any) -> bytearray:
        return bytearray(await self._need().read_value(descriptor.handle))

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data: Any,
                              response: bool) -> None:
        await self._need().write_value(characteristic.obj, bytes(data), with_response=response)

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        await self._need().write_value(descriptor.handle, bytes(data), with_response=True)

    async def start_notify(self, characteristic: BleakGATTCharacteristic,
                           callback: NotifyCallback, **kwargs: Any) -> None:
        await self._need().subscribe(characteristic.obj, lambda v: callback(bytearray(v)))

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        await self._need().unsubscribe(characteristic.obj)
