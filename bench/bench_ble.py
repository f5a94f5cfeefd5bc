#!/usr/bin/env python3
"""BLE throughput on virtual radios: records/s from MicroPython nodes over BLE into the
gateway, against the raw notification rate of the same virtual link, measured in one run.

    .venv/bin/python bench/bench_ble.py                  # 1 node, then 8 nodes
    .venv/bin/python bench/bench_ble.py --nodes 1 --seconds 10

raw       bumble peripherals (CPython, no firmware) notifying 244-byte values (MTU 247) as
          fast as the link drains, to the gateway's central through bleak on the bumble
          backend (tests/support/bleak_bumble.py); 1 peripheral, then N at once
records   real nodes (firmware/sim_main.py under MicroPython, their ble.py + auth.py through
          tools/ble_bridge.py) fill their journals with the gateway away, then the gateway
          daemon (in process: bleak links, authentication, sealed frames, SessionManager,
          SQLite queue) connects and drains them; records acked per second while draining
          and the link's byte rate (sealed frames, COBS, CRC) as a share of the raw rate
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from bumble import gatt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from roadside.tools.ble_bridge import VirtualAir  # noqa: E402
from support.ble_rig import BleRig  # noqa: E402
from support.bleak_bumble import BumbleBackend  # noqa: E402

RAW_UUID_SVC = "7d2a00f0-3c4e-4b8a-9f1d-52e0a1b2c3d4"
RAW_UUID_TX = "7d2a00f1-3c4e-4b8a-9f1d-52e0a1b2c3d4"


async def raw_rate(peripherals: int, seconds: float) -> dict[str, float]:
    """Notifications/s and bytes/s, N bumble peripherals -> one central through bleak."""
    from bleak import BleakClient
    air = VirtualAir()
    backend = await BumbleBackend.create(air)
    got = [0, 0]
    clients = []
    devs = []
    for i in range(peripherals):
        dev = await air.device(f"raw{i}", f"E0:00:00:00:00:{i + 1:02X}")
        tx = gatt.Characteristic(RAW_UUID_TX, gatt.Characteristic.Properties.NOTIFY,
                                 gatt.Characteristic.READABLE, b"")
        dev.add_service(gatt.Service(RAW_UUID_SVC, [tx]))
        await dev.start_advertising(advertising_data=bytes([2, 1, 6]))
        devs.append((dev, tx))
        client = BleakClient(f"E0:00:00:00:00:{i + 1:02X}", backend=backend.client)
        await client.connect()

        def on(_c: object, data: bytearray) -> None:
            got[0] += 1
            got[1] += len(data)
        await client.start_notify(RAW_UUID_TX, on)
        clients.append(client)
    payload = bytes(244)
    stop = time.monotonic() + seconds

    async def pump(dev: object, tx: object) -> None:
        conn = next(iter(dev.connections.values()))  # type: ignore[attr-defined]
        while time.monotonic() < stop:
            await dev.notify_subscriber(conn, tx, payload)  # type: ignore[attr-defined]
            await conn.drain()
    t0 = time.monotonic()
    await asyncio.gather(*(pump(d, t) for d, t in devs))
    await asyncio.sleep(0.05)
    dt = time.monotonic() - t0
    for c in clients:
        await c.disconnect()
    for d in air.devices:
        await d.power_off()
    return {"notifications_s": got[0] / dt, "bytes_s": got[1] / dt}


async def records_rate(nodes: int, backlog: int) -> dict[str, float]:
    """Each node starts with `backlog` records in its journal; the time from the gateway's
    start until all are acked gives records/s (connection set-up included)."""
    with tempfile.TemporaryDirectory(prefix="bench-ble-") as tmp:
        rig = BleRig(Path(tmp), nodes=nodes, speed=1.0, scenario="calm",
                     config={"journal_max_bytes": 262144})
        try:
            await rig.start(prefill=backlog)
            config = rig.gateway_config(None, max_connections=max(8, nodes))
            await rig.start_gateway(config)
            want = nodes * backlog
            t_open = None
            async with aiohttp.ClientSession() as http:
                while True:
                    try:
                        async with http.get(rig.status_url) as r:
                            doc = await r.json()
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.05)
                        continue
                    now = time.monotonic()
                    opened = sum(x["state"] == "open" for x in doc["links"])
                    if t_open is None and opened == nodes:
                        t_open = now
                        b0 = sum(x["bytes_in"] for x in doc["links"])
                        a0 = sum(n["acked"] for n in doc["nodes"])
                    acked = sum(n["acked"] for n in doc["nodes"])
                    if t_open is not None and acked >= want:
                        break
                    await asyncio.sleep(0.05)
            dt = now - t_open
            b1 = sum(x["bytes_in"] for x in doc["links"])
            return {"records_s": (acked - a0) / dt, "link_bytes_s": (b1 - b0) / dt,
                    "records": acked - a0, "seconds": dt,
                    "auth_failures": sum(x["auth_failures"] for x in doc["links"])}
        finally:
            await rig.stop()


async def main(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {"date": time.strftime("%Y-%m-%d")}
    for n in args.nodes:
        raw = await raw_rate(n, args.raw_seconds)
        rec = await records_rate(n, args.backlog if n == 1 else args.backlog // 2)
        share = rec["link_bytes_s"] / raw["bytes_s"] if raw["bytes_s"] else 0.0
        out[f"{n}_nodes"] = {"raw": raw, "records": rec, "share_of_raw": share}
        print(f"{n} node(s): raw {raw['notifications_s']:.0f} notifications/s"
              f" ({raw['bytes_s'] / 1000:.0f} kB/s); records {rec['records_s']:.0f}/s,"
              f" link {rec['link_bytes_s'] / 1000:.1f} kB/s = {share:.0%} of raw",
              flush=True)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--backlog", type=int, default=2000,
                    help="records in each node's journal (halved with several nodes)")
    ap.add_argument("--raw-seconds", type=float, default=3.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    result = asyncio.run(main(a))
    if a.json:
        print(json.dumps(result, indent=2))
