#!/usr/bin/env python3
"""Gateway memory: resident size of the real daemon with 100 connected nodes (goal <= 80 MB).

    .venv/bin/python bench/bench_gateway_memory.py [--nodes 100] [--seconds 20]

The daemon runs as its own process (`python -m roadside.gateway.daemon`) with one serial link
per node on real ptys and an HTTP uplink to a sink on loopback. This process plays the nodes on
the pty masters: HELLO, then a RECORDS message of 8 level records every 0.5 s per node, each
sent only after the ACK of the previous one. Reported: the daemon's VmRSS (from /proc) idle
with no nodes, once every node has a session, and at the end of the run, plus VmHWM (peak).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import tty
from pathlib import Path

import aiohttp
from aiohttp import web
from roadside.gateway import protocol as p
from roadside.tools.addresses import free_port
from roadside.tools.sim import gateway_toml, procs

T0 = 1_795_420_800


def vm(pid: int, key: str) -> float:
    """A /proc/PID/status size field in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Node:
    """One simulated node on a pty master: go-back-nothing, one message in flight."""

    def __init__(self, index: int) -> None:
        self.id = f"wl-{index:04d}"
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave            # keep it open so the pty stays while the gateway opens it
        os.set_blocking(self.master, False)
        self.decoder = p.FrameDecoder()
        self.next_seq = 1
        self.acked = 0
        self.acked_event = asyncio.Event()

    def send(self, message: dict) -> None:
        os.write(self.master, p.encode_frame(message))

    def on_readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:
            return
        for payload in self.decoder.feed(data):
            msg = p.decode_message(payload)
            if isinstance(msg, p.Ack):
                self.acked = msg.seq
                self.acked_event.set()
            elif isinstance(msg, p.Error) and msg.code == p.ERR_NO_SESSION:
                self.hello()

    def hello(self) -> None:
        self.send({0: p.HELLO, 1: self.id, 2: "water", 3: "bench", 4: "sim", 5: 1,
                   6: "power_on", 7: self.next_seq, 8: 1, 9: self.acked + 1})

    async def run(self, until: float) -> None:
        self.hello()
        while time.monotonic() < until:
            first = self.acked + 1
            recs = [[s, T0 + s, p.KIND_LEVEL, 0, {1: 100.5, 2: 0.25, 3: 1995}]
                    for s in range(first, first + 8)]
            self.next_seq = first + 8
            self.acked_event.clear()
            self.send({0: p.RECORDS, 1: first, 2: recs})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.acked_event.wait()
            await asyncio.sleep(0.5)

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


async def sink(port: int) -> web.AppRunner:
    async def batches(_request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/batches", batches)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def wait_sessions(url: str, count: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    up = 0
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    status = await r.json()
                    up = sum(1 for n in status.get("nodes", []) if n.get("link") == "up")
                    if up >= count:
                        return up
            await asyncio.sleep(0.5)
    return up


async def main_async(nodes: int, seconds: float) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="roadside-bench-mem-"))
    sink_port, status_port = free_port(), free_port()
    runner = await sink(sink_port)
    sim = [Node(i) for i in range(1, nodes + 1)]
    loop = asyncio.get_running_loop()
    for n in sim:
        loop.add_reader(n.master, n.on_readable)
    config = gateway_toml.write(tmp / "gateway.toml", [n.path for n in sim], tmp / "data",
                                  f"http://127.0.0.1:{sink_port}/batches",
                                  f"127.0.0.1:{status_port}")
    idle_cfg = gateway_toml.write(tmp / "idle.toml", [], tmp / "idle-data",
                                    f"http://127.0.0.1:{sink_port}/batches",
                                    f"127.0.0.1:{free_port()}")
    cmd = [sys.executable, "-m", "roadside.gateway.daemon", "--config"]
    try:
        idle = procs.spawn(cmd + [str(idle_cfg)], tmp / "idle.log")
        procs.wait_for_line(tmp / "idle.log", r"status on http", idle, 30)
        await asyncio.sleep(1.0)
        rss_idle = vm(idle.pid, "VmRSS")
        procs.stop(idle)

        gw = procs.spawn(cmd + [str(config)], tmp / "gateway.log")
        procs.wait_for_line(tmp / "gateway.log", r"status on http", gw, 30)
        until = time.monotonic() + seconds
        tasks = [asyncio.create_task(n.run(until)) for n in sim]
        up = await wait_sessions(f"http://127.0.0.1:{status_port}/status", nodes, 30)
        rss_connected = vm(gw.pid, "VmRSS")
        await asyncio.gather(*tasks)
        rss_end, hwm = vm(gw.pid, "VmRSS"), vm(gw.pid, "VmHWM")
        stored = sum(n.acked for n in sim)
        procs.stop(gw)
    finally:
        for n in sim:
            loop.remove_reader(n.master)
            n.close()
        await runner.cleanup()
        procs.stop_all()
    print(f"gateway daemon, {nodes} serial links on ptys, {seconds:.0f} s of traffic"
          f" ({stored} records acked)")
    print(f"  idle, no links:            {rss_idle:6.1f} MB RSS")
    print(f"  {up:3d} nodes in session:     {rss_connected:6.1f} MB RSS")
    print(f"  end of run:                {rss_end:6.1f} MB RSS   peak (VmHWM) {hwm:6.1f} MB"
          f"   goal <= 80 MB")
    return 0 if up == nodes else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args(argv)
    return asyncio.run(main_async(args.nodes, args.seconds))


if __name__ == "__main__":
    sys.exit(main())
