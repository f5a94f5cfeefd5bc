"""A fleet on one machine (issue 15 item 2): N gateway daemons (real processes), each serving M
light simulated nodes (tools/sim/light_node.py, all in this process), delivering over HTTP to
K `roadside ingest` processes and one PostgreSQL; with the faults a city sees, and the count
at the end: every record a node made is one row, none lost, none twice.

Gateway g posts to ingest g % K (its uplink has one URL; a city puts a load balancer there).
Faults (each optional, see Fleet's methods): an ingest process killed -9 and restarted on its
port; a gateway killed -9 and restarted on its data (its nodes say HELLO again); PostgreSQL
restarted (the caller's restart function); a gateway partitioned from the backend (its uplink
goes through a TcpProxy that holds connections without forwarding: requests time out) for a
while, then healed and its backlog timed until its queue is empty. bench/bench_fleet.py runs
it large and prints the figures; tests/e2e/test_fleet.py small.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ..addresses import free_port
from ..sim.gateway_toml import link_sections
from . import procs
from .light_node import LightNode

ROWS_SQL = ("SELECT node, seq, extract(epoch FROM received)::float8 FROM records"
            " WHERE gateway <> 'blast'")
STORED_SQL = ("SELECT coalesce(sum((answer->>'stored')::int), 0) FROM batches"
              " WHERE gateway <> 'blast'")


def fleet_rows(db_url: str) -> tuple[list[tuple[str, int, float]], int]:
    """Every (node, seq, received epoch s) row the fleet wrote, and the sum of its batches'
    `stored` answers (bench/bench_fleet.py's blast batches left out)."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(ROWS_SQL).fetchall()
        stored = conn.execute(STORED_SQL).fetchone()
    return rows, int(stored[0]) if stored else 0


class TcpProxy:
    """127.0.0.1:port -> target; `cut()` holds new and open connections without forwarding a
    byte (a partition: the sender times out), `heal()` forwards again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.open = True
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            while not self.open:                      # partitioned: hold, forward nothing
                await asyncio.sleep(0.1)
                if writer.is_closing():
                    return
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                return
            self._conns.add(up_w)

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    while data := await src.read(65536):
                        if not self.open:
                            return
                        dst.write(data)
                        await dst.drain()
                with contextlib.suppress(OSError):
                    dst.close()

            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
            self._conns.discard(up_w)
        finally:
            self._conns.discard(writer)
            with contextlib.suppress(OSError):
                writer.close()

    def cut(self) -> None:
        self.open = False
        for w in list(self._conns):                   # what was in flight is lost too
            with contextlib.suppress(OSError):
                w.close()

    def heal(self) -> None:
        self.open = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclass
class FleetOptions:
    db_url: str
    run_dir: Path
    gateways: int = 3
    nodes: int = 5                    # per gateway
    ingests: int = 2
    period: float = 1.0               # seconds between a node's records
    alarm_every: int = 100            # every n-th record an alarm with PRIORITY (0: none)
    max_records: int = 200            # the gateways' [batch]
    max_age_s: float = 1.0
    uplink_timeout_s: float = 3.0
    seed: int = 1


@dataclass
class Gateway:
    index: int
    config: Path
    nodes: list[LightNode]
    proc: Any = None
    status_url: str = ""
    starts: int = 0
    proxy: TcpProxy | None = None


@dataclass
class Ingest:
    index: int
    port: int
    proc: procs.IngestProcess | None = None
    starts: int = 0


@dataclass
class Counted:
    made: int = 0
    rows: int = 0
    lost: int = 0
    extra: int = 0                    # rows no node made (or made twice): must be 0
    stored_by_batches: int = 0        # sum of the batches' `stored`: each row counted once
    latencies: list[float] = field(default_factory=list)   # node made -> row committed, s

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(q * len(s)))]


class Fleet:
    def __init__(self, options: FleetOptions) -> None:
        self.o = options
        self.rng = random.Random(options.seed)
        self.ingests = [Ingest(i, free_port()) for i in range(options.ingests)]
        self.gateways: list[Gateway] = []
        self._node_tasks: list[asyncio.Task[None]] = []
        self.events: list[tuple[float, str]] = []
        self.t0 = time.monotonic()
        self.session: aiohttp.ClientSession | None = None

    def log(self, what: str) -> None:
        self.events.append((time.monotonic() - self.t0, what))
        print(f"[{time.monotonic() - self.t0:7.1f} s] {what}", flush=True)

    # -- processes ----------------------------------------------------------------------------

    async def start_ingest(self, ing: Ingest) -> None:
        log = self.o.run_dir / "logs" / f"ingest{ing.index}.{ing.starts}.log"
        ing.starts += 1
        ing.proc = await asyncio.to_thread(procs.start_ingest, self.o.db_url, log,
                                           listen=f"127.0.0.1:{ing.port}")

    async def start_gateway(self, gw: Gateway) -> None:
        log = self.o.run_dir / "logs" / f"gw{gw.index}.{gw.starts}.log"
        gw.starts += 1
        gw.proc, gw.status_url = await asyncio.to_thread(procs.start_gateway, gw.config, log,
                                                         60)

    def _config(self, g: int, nodes: list[LightNode], url: str) -> Path:
        o = self.o
        d = self.o.run_dir / f"gw{g}"
        d.mkdir(parents=True, exist_ok=True)
        text = (f'[gateway]\nid = "gw-{g:02d}"\nsite = "site-{g:02d}"\n'
                f'data_dir = "{d / "data"}"\n\n' + link_sections([n.path for n in nodes])
                + f"[batch]\nmax_records = {o.max_records}\nmax_age_s = {o.max_age_s}\n\n"
                f'[[uplink]]\ntype = "http"\nname = "ingest"\nurl = "{url}"\n'
                f"timeout_s = {o.uplink_timeout_s}\nbackoff_initial_s = 0.2\n"
                "backoff_max_s = 2\n\n"
                '[status]\nlisten = "127.0.0.1:0"\n')
        path = d / "gateway.toml"
        path.write_text(text)
        return path

    async def start(self, partitionable: int | None = 0) -> None:
        """Ingest processes, then the nodes, then the gateways (gateway `partitionable`'s
        uplink through a TcpProxy)."""
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        await asyncio.gather(*(self.start_ingest(i) for i in self.ingests))
        self.log(f"{len(self.ingests)} ingest processes up")
        for g in range(self.o.gateways):
            nodes = [LightNode(f"g{g:02d}-n{n:03d}", self.o.period, self.o.alarm_every)
                     for n in range(self.o.nodes)]
            ing = self.ingests[g % len(self.ingests)]
            proxy = None
            port = ing.port
            if g == partitionable:
                proxy = TcpProxy(ing.port)
                await proxy.start()
                port = proxy.port
            cfg = self._config(g, nodes, f"http://127.0.0.1:{port}/batches")
            self.gateways.append(Gateway(g, cfg, nodes, proxy=proxy))
        for gw in self.gateways:
            self._node_tasks += [asyncio.create_task(n.run()) for n in gw.nodes]
        # a few at a time: 20 daemons starting at once on 2 cores take long each
        sem = asyncio.Semaphore(4)

        async def one(gw: Gateway) -> None:
            async with sem:
                await self.start_gateway(gw)

        await asyncio.gather(*(one(gw) for gw in self.gateways))
        self.log(f"{len(self.gateways)} gateways x {self.o.nodes} nodes up")

    async def stop(self) -> None:
        for t in self._node_tasks:
            t.cancel()
        await asyncio.gather(*self._node_tasks, return_exceptions=True)
        for gw in self.gateways:
            if gw.proc is not None:
                await asyncio.to_thread(procs.stop, gw.proc)
            if gw.proxy is not None:
                await gw.proxy.close()
            for n in gw.nodes:
                n.close()
        for ing in self.ingests:
            if ing.proc is not None:
                await asyncio.to_thread(procs.stop, ing.proc.proc)
        if self.session is not None:
            await self.session.close()

    # -- observing ----------------------------------------------------------------------------

    @property
    def nodes(self) -> list[LightNode]:
        return [n for gw in self.gateways for n in gw.nodes]

    def made(self) -> int:
        return sum(n.made_count for n in self.nodes)

    async def _json(self, url: str) -> dict[str, Any] | None:
        assert self.session is not None
        try:
            async with self.session.get(url) as resp:
                return await resp.json() if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
            return None

    async def ingest_stats(self) -> list[dict[str, Any] | None]:
        return [await self._json(f"http://127.0.0.1:{i.port}/stats") for i in self.ingests]

    async def queue_depth(self, gw: Gateway) -> int | None:
        st = await self._json(gw.status_url)
        return None if st is None else int(st["queue"]["depth"])

    async def wait(self, cond: Callable[[], Any], timeout: float, what: str,
                   every: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while True:
            r = cond()
            if asyncio.iscoroutine(r):
                r = await r
            if r:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            await asyncio.sleep(every)

    # -- faults -------------------------------------------------------------------------------

    async def kill_ingest(self, down_s: float) -> Ingest:
        ing = self.rng.choice(self.ingests)
        assert ing.proc is not None
        procs.kill(ing.proc.proc)
        self.log(f"ingest {ing.index} killed -9 (down {down_s:.0f} s)")
        await asyncio.sleep(down_s)
        await self.start_ingest(ing)
        self.log(f"ingest {ing.index} back")
        return ing

    async def kill_gateway(self, down_s: float, spare: int | None = 0) -> Gateway:
        gw = self.rng.choice([g for g in self.gateways if g.index != spare])
        procs.kill(gw.proc)
        self.log(f"gateway {gw.index} killed -9 (down {down_s:.0f} s)")
        await asyncio.sleep(down_s)
        await self.start_gateway(gw)
        self.log(f"gateway {gw.index} back")
        return gw

    async def partition(self, gw_index: int, seconds: float,
                        drain_timeout: float) -> tuple[int, float]:
        """Cut gateway gw_index's uplink for `seconds`, heal it, and time its backlog's drain:
        (records it held when healed, seconds until its queue was empty)."""
        gw = self.gateways[gw_index]
        assert gw.proxy is not None, "this gateway's uplink has no proxy"
        gw.proxy.cut()
        self.log(f"gateway {gw.index} partitioned from the backend for {seconds:.0f} s")
        await asyncio.sleep(seconds)
        held = await self.queue_depth(gw) or 0
        gw.proxy.heal()
        t = time.monotonic()
        self.log(f"gateway {gw.index} healed: {held} records to drain")

        async def empty() -> bool:
            return await self.queue_depth(gw) == 0

        await self.wait(empty, drain_timeout, f"gateway {gw.index}'s backlog to drain", 0.1)
        took = time.monotonic() - t
        self.log(f"gateway {gw.index} drained {held} records in {took:.1f} s")
        return held, took

    # -- the end ------------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Stop making records; wait until every node is acked and every queue empty."""
        for n in self.nodes:
            n.produce = False
        self.log(f"nodes stopped: {self.made()} records made; draining")
        await self.wait(lambda: all(n.acked == n.made_count for n in self.nodes), timeout,
                        "every node acked by its gateway")

        async def queues_empty() -> bool:
            depths = [await self.queue_depth(gw) for gw in self.gateways]
            return all(d == 0 for d in depths)

        await self.wait(queues_empty, timeout, "every gateway's queue to empty", 0.5)
        self.log("every gateway's queue is empty")

    def count(self, rows: list[tuple[str, int, float]], stored_by_batches: int) -> Counted:
        """rows: (node, seq, received epoch s) from PostgreSQL."""
        c = Counted(made=self.made(), rows=len(rows), stored_by_batches=stored_by_batches)
        made = {n.id: n for n in self.nodes}
        seen: set[tuple[str, int]] = set()
        for node, seq, received in rows:
            n = made.get(node)
            if n is None or not 1 <= seq <= n.made_count or (node, seq) in seen:
                c.extra += 1
                continue
            seen.add((node, seq))
            c.latencies.append(received - n.made[seq])
        c.lost = c.made - len(seen)
        return c
