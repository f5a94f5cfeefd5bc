#!/usr/bin/env python3
"""A noisy line: what a water node delivers through a virtual cable that flips bits.

    .venv/bin/python bench/bench_noise.py                      # BER 1e-3 and 1e-4, 60 s each
    .venv/bin/python bench/bench_noise.py --ber 1e-3 --seconds 180 --speed 40

One real MicroPython water node (tools/sim/launcher.py SimNode at its HEAPSIZE, flood scenario) on a
virtual cable (tools/sim/virtual_cable.py) whose relay flips one bit per byte with probability
8 x BER, in both directions (records to the gateway, ACKs back). The gateway end is
tests/support/line_gateway.py: the real wire protocol (roadside.gateway.protocol), an ACK per
RECORDS, records beyond a gap held as the gateway's queue holds them. The node's log is
tailed to timestamp when each record was journaled.

Reported per BER:
  produced / delivered   records the node journaled in the run, and how many arrived
  drain                  seconds after the noisy run until every record had arrived
  latency p50/p95/max    journaled -> deliverable at the gateway (it and every seq below it
                         stored, as the gateway's queue forwards them), every record (s)
  alarms p50/max         the same for alarm records journaled once the session ran (the
                         HELLO exchange at boot is retried every 3 s and is not counted)
  goodput                record bytes delivered per second, and their share of the bytes
                         the node put on the wire (frames, resends, COBS and CRC included)
  bad frames             frames the gateway dropped (CRC or COBS), ACK frames the node lost
                         are not visible here
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import cbor2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from roadside.tools.sim.launcher import NodeSpec, SimNode, build_mpy, resolve_scenario  # noqa: E402
from roadside.tools.sim.virtual_cable import TO_GATEWAY, TO_NODE  # noqa: E402
from support.line_gateway import LineGateway, LogWatcher  # noqa: E402


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


async def run_one(ber: float, seconds: float, speed: float, work: Path, seed: int) -> dict:
    spec = NodeSpec(f"wa-noise-{ber:g}", "water", resolve_scenario("water", "flood"),
                    speed=speed, seed=seed)
    node = SimNode(spec, work, mpy=build_mpy())
    gw = LineGateway(node.gateway_path)
    watch = LogWatcher(node.log)
    rate = 8 * ber
    res: dict = {"ber": ber}
    await node.start()
    node.cable.set_bit_flips(rate, seed=seed, direction=TO_GATEWAY)
    node.cable.set_bit_flips(rate, seed=seed + 1, direction=TO_NODE)
    gw.start()
    watch.start()
    start = time.monotonic()
    try:
        await asyncio.sleep(seconds)
        watch.poll()
        produced = watch.produced
        end = time.monotonic()
        try:
            await gw.wait_for(lambda: gw.acked >= produced, 120, "the drain")
            res["drain_s"] = time.monotonic() - end
        except AssertionError:
            res["drain_s"] = None
    finally:
        await watch.stop()
        gw.close()
        await node.stop()
    log = node.log.read_text(errors="replace")
    # the log is polled every 20 ms: a record can seem to arrive before it was journaled
    lat = [max(0.0, gw.arrived[s] - watch.journaled[s]) for s in range(1, produced + 1)
           if s in gw.arrived and s in watch.journaled]
    steady = min(gw.arrived.values(), default=start) + 5
    alarms = [max(0.0, gw.arrived[s] - watch.journaled[s]) for s in watch.alarms
              if s <= produced and s in gw.arrived and watch.journaled.get(s, 0) > steady]
    rec_bytes = sum(len(cbor2.dumps([r.seq, r.t, r.kind, r.flags, r.body]))
                    for s, r in gw.records.items() if s <= produced)
    wire = node.cable.counters()[TO_GATEWAY]["bytes"]
    res.update(
        produced=produced, delivered=sum(1 for s in gw.records if s <= produced),
        lat_p50=pct(lat, 0.5), lat_p95=pct(lat, 0.95), lat_max=max(lat, default=float("nan")),
        alarms=len(alarms), alarm_p50=pct(alarms, 0.5),
        alarm_max=max(alarms, default=float("nan")),
        goodput=rec_bytes / (end - start), wire_share=rec_bytes / wire if wire else 0.0,
        bad_frames=gw.dec.crc + gw.dec.cobs, frames=gw.dec.frames,
        flipped=node.cable.counters()[TO_GATEWAY]["flipped"]
        + node.cable.counters()[TO_NODE]["flipped"],
        timeouts=log.count("no ack: resend"), fast=log.count(" again: resend"),
        memory_errors=log.count("MemoryError"), resets=node.resets)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ber", type=float, action="append",
                    help="bit error rate(s) (default 1e-3 and 1e-4)")
    ap.add_argument("--seconds", type=float, default=60, help="noisy run per BER (default 60)")
    ap.add_argument("--speed", type=float, default=40,
                    help="simulated seconds per real second (default 40: ~1.5 records/s)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", type=Path, help="run here and keep the node logs")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="roadside-noise-") as tmp_:
        tmp = args.keep or tmp_
        for i, ber in enumerate(args.ber or [1e-3, 1e-4]):
            rows.append(asyncio.run(run_one(ber, args.seconds, args.speed,
                                            Path(tmp) / str(i), args.seed)))
    print(f"noisy line: water node (flood, speed {args.speed:g}), {args.seconds:g} s per BER,"
          " bits flipped both ways")
    print(f"{'BER':>6} {'produced':>8} {'delivered':>9} {'drain s':>7} "
          f"{'lat p50/p95/max s':>18} {'alarms':>6} {'alarm p50/max s':>15} "
          f"{'goodput B/s':>11} {'of wire':>7} {'bad fr':>6} {'timeouts':>8} {'fast':>4} "
          f"{'resets':>6}")
    for r in rows:
        drain = "never" if r["drain_s"] is None else f"{r['drain_s']:.1f}"
        print(f"{r['ber']:6.0e} {r['produced']:8d} {r['delivered']:9d} {drain:>7} "
              f"{r['lat_p50']:6.2f}/{r['lat_p95']:5.2f}/{r['lat_max']:5.2f} "
              f"{r['alarms']:6d} {r['alarm_p50']:7.2f}/{r['alarm_max']:5.2f} "
              f"{r['goodput']:11.0f} {100 * r['wire_share']:6.0f}% {r['bad_frames']:6d} "
              f"{r['timeouts']:8d} {r['fast']:4d} {r['resets'] + r['memory_errors']:6d}")
    print("(latency: journaled -> deliverable at the gateway; alarms counted once the session"
          " ran; goodput: record bytes delivered per second of the run; timeouts / fast: go-back"
          " on the ACK timer / on a repeated ACK; resets: node resets + MemoryErrors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
