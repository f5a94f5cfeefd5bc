#!/usr/bin/env python3
"""BLE throughput on virtual radios: records/s from MicroPython nodes over BLE into the
gateway, against the raw notification rate of the same virtual link, measured in one run.

    .venv/bin/python bench/bench_ble.py                  # 1 node, then 8 nodes, 5 runs each
    .venv/bin/python bench/bench_ble.py --nodes 1 --repeat 3 --json

raw       bumble peripherals (CPython, no firmware) notifying 244-byte values (MTU 247) as
          fast as the link drains, to the gateway's central through bleak on the bumble
          backend (tests/support/bleak_bumble.py); 1 peripheral, then N at once
records   real nodes (firmware/sim_main.py under MicroPython, their ble.py + auth.py through
          tools/sim/ble_bridge.py) fill their journals with the gateway away, then the gateway
          daemon (in process: bleak links, authentication, sealed frames, SessionManager,
          SQLite queue) connects and drains them; records acked per second and the link's
          byte rate (sealed frames, COBS, CRC) while the middle 80 % of the backlog is acked
          (connection set-up and the last window left out), as a share of the raw rate
cpu       CPU seconds per second of this process (bumble's controllers and hosts for every
          device, the bridges, the gateway with its SQLite thread), and of the node
          processes. Both phases run bumble in this one process: "share at equal CPU" is
          the records' link bytes per CPU second of this process over raw's, the share the
          records would reach if they got as much CPU as raw did (the machine may be busy)

Each measurement runs --repeat times, raw and records alternately; medians are printed. The
backlog is 600 records by default: with 1,200 or more a node's journal (its offset array in
the 112k heap, as on an ESP32) ends in MemoryError, a restart and a reconnect, which the
`reconnects` figure shows (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from bumble import gatt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from roadside.tools.sim.ble_bridge import VirtualAir  # noqa: E402
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
    t0, c0 = time.monotonic(), time.process_time()
    await asyncio.gather(*(pump(d, t) for d, t in devs))
    await asyncio.sleep(0.05)
    dt, cpu = time.monotonic() - t0, time.process_time() - c0
    for c in clients:
        await c.disconnect()
    for d in air.devices:
        await d.power_off()
    return {"notifications_s": got[0] / dt, "bytes_s": got[1] / dt, "cpu_s": cpu / dt}


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process so far; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def records_rate(nodes: int, backlog: int) -> dict[str, float]:
    """Each node starts with `backlog` records in its journal; records/s while the gateway
    acks the middle 80 % of them."""
    with tempfile.TemporaryDirectory(prefix="bench-ble-") as tmp:
        rig = BleRig(Path(tmp), nodes=nodes, speed=1.0, scenario="calm",
                     config={"journal_max_bytes": 262144})
        try:
            await rig.start(prefill=backlog)
            config = rig.gateway_config(None, max_connections=max(8, nodes))
            await rig.start_gateway(config)
            want = nodes * backlog
            marks: dict[float, tuple[float, int, int, float, float]] = {}
            async with aiohttp.ClientSession() as http:
                while 0.9 not in marks:
                    try:
                        async with http.get(rig.status_url) as r:
                            doc = await r.json()
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.05)
                        continue
                    acked = sum(n["acked"] for n in doc["nodes"])
                    pids = [n.proc.pid for n in rig.nodes if n.proc is not None]
                    for frac in (0.1, 0.9):
                        if frac not in marks and acked >= frac * want:
                            marks[frac] = (time.monotonic(), acked,
                                           sum(x["bytes_in"] for x in doc["links"]),
                                           time.process_time(), sum(_cpu(p) for p in pids))
                    await asyncio.sleep(0.02)
            (t0, a0, b0, c0, n0), (t1, a1, b1, c1, n1) = marks[0.1], marks[0.9]
            dt = t1 - t0
            if dt < 0.1:
                raise SystemExit(f"the backlog drained in {dt:.3f} s: too fast to measure;"
                                 " raise --backlog")
            return {"records_s": (a1 - a0) / dt, "link_bytes_s": (b1 - b0) / dt,
                    "records": a1 - a0, "seconds": dt, "cpu_s": (c1 - c0) / dt,
                    "nodes_cpu_s": (n1 - n0) / dt,
                    "auth_failures": sum(x["auth_failures"] for x in doc["links"]),
                    "reconnects": sum(x["reconnects"] for x in doc["links"])}
        finally:
            await rig.stop()


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                           "load_before": round(os.getloadavg()[0], 2)}
    for n in args.nodes:
        raws, recs, shares, equal = [], [], [], []
        for _ in range(args.repeat):
            raw = await raw_rate(n, args.raw_seconds)
            rec = await records_rate(n, args.backlog if n == 1 else max(1, args.backlog // 2))
            raws.append(raw)
            recs.append(rec)
            shares.append(rec["link_bytes_s"] / raw["bytes_s"])
            equal.append((rec["link_bytes_s"] / rec["cpu_s"]) / (raw["bytes_s"] / raw["cpu_s"]))
            print(f"  {n} node(s): raw {raw['notifications_s']:.0f}/s, cpu {raw['cpu_s']:.2f};"
                  f" records {rec['records_s']:.0f}/s over {rec['seconds']:.2f} s, link"
                  f" {rec['link_bytes_s'] / 1000:.1f} kB/s = {shares[-1]:.0%} of raw, cpu"
                  f" {rec['cpu_s']:.2f} + nodes {rec['nodes_cpu_s']:.2f}; at equal CPU"
                  f" {equal[-1]:.0%}; reconnects {rec['reconnects']}",
                  file=sys.stderr, flush=True)
        raw, rec = _median(raws), _median(recs)
        share, share_cpu = statistics.median(shares), statistics.median(equal)
        out[f"{n}_nodes"] = {"raw": raw, "records": rec, "share_of_raw": share,
                             "share_at_equal_cpu": share_cpu,
                             "runs": [{"raw": a, "records": b}
                                      for a, b in zip(raws, recs, strict=True)]}
        print(f"{n} node(s), median of {args.repeat}: raw {raw['notifications_s']:.0f}"
              f" notifications/s ({raw['bytes_s'] / 1000:.0f} kB/s, cpu {raw['cpu_s']:.2f});"
              f" records {rec['records_s']:.0f}/s, link {rec['link_bytes_s'] / 1000:.1f} kB/s"
              f" (cpu {rec['cpu_s']:.2f} + nodes {rec['nodes_cpu_s']:.2f}) = {share:.0%} of"
              f" raw, {share_cpu:.0%} at equal CPU", flush=True)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--backlog", type=int, default=600,
                    help="records in each node's journal (halved with several nodes)")
    ap.add_argument("--raw-seconds", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=5, help="runs per measurement (medians)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    result = asyncio.run(main(a))
    if a.json:
        print(json.dumps(result, indent=2))
