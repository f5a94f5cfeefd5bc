"""`roadside demo`: receiver + gateway + N simulated nodes, with a live view.

Everything runs for real: MicroPython nodes on virtual cables, the gateway daemon as a
subprocess, the reference receiver as a subprocess. With a duration the demo then stops the
nodes, waits (bounded) for the gateway to deliver everything, and checks that every record
each node produced arrived exactly once and in order.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from rich.live import Live

from ..addresses import free_port
from ..errors import LaunchError, ToolError
from . import gateway_toml, procs
from .demo_ota import DemoOta
from .launcher import Simulation
from .node_state import NodeStateError, held_seqs, last_seq
from .receiver_store import latest_readings, read_seqs
from .status_view import progress_line, queue_depth, render, uplink_states

REFRESH_S = 0.5
PROGRESS_EVERY_S = 2.0


def distribute(roles: tuple[str, ...] | list[str], nodes: int) -> list[str]:
    """`nodes` roles taken round-robin from `roles`: (water, signal, toll), 4 -> w, s, t, w."""
    return [roles[i % len(roles)] for i in range(nodes)]


@dataclass
class DemoOptions:
    nodes: int = 3
    roles: tuple[str, ...] = ("water",)   # the nodes are distributed over these, in turn
    duration: float | None = None
    uplink: str | None = None
    run_dir: Path | None = None
    speed: float = 10.0
    scenario: str = "flood"                 # the water nodes' scenario
    scenarios: dict[str, str] = field(default_factory=dict)   # other roles' (default: usual)
    fail_rate: float = 0.0
    drain_timeout: float = 30.0
    node_config: dict[str, Any] = field(default_factory=dict)
    settings: gateway_toml.GatewaySettings = field(default_factory=gateway_toml.GatewaySettings)
    ota: bool = False         # roll an update (this app, one patch up) through the nodes


@dataclass
class NodeResult:
    node: str
    produced: int
    delivered: int
    missing: list[int]
    out_of_order: int
    held: int = 0  # unacked in the stopped node's journal, not at the receiver: not lost


@dataclass
class Summary:
    nodes: list[NodeResult]
    duplicate_records: int
    duplicate_batches: int
    queue_left: Any

    @property
    def ok(self) -> bool:
        return (self.duplicate_records == 0
                and all(not n.missing and not n.out_of_order and n.produced > 0
                        for n in self.nodes))

    def lines(self) -> list[str]:
        out = ["", "summary:", f"{'node':10} {'produced':>9} {'delivered':>10} {'missing':>8}"
               f" {'out of order':>13} {'held by node':>13}"]
        for n in self.nodes:
            out.append(f"{n.node:10} {n.produced:9} {n.delivered:10} {len(n.missing):8}"
                       f" {n.out_of_order:13} {n.held:13}")
            if n.missing:
                shown = ", ".join(map(str, n.missing[:10]))
                out.append(f"  missing seqs: {shown}{' ...' if len(n.missing) > 10 else ''}")
        out.append(f"duplicate records at the receiver: {self.duplicate_records}   "
                   f"retried batches answered as duplicates: {self.duplicate_batches}")
        out.append("RESULT: every record arrived exactly once, in order" if self.ok else
                   "RESULT: FAILED: records missing, duplicated or out of order (see above)")
        return out


def compare(produced: dict[str, int], arrived: dict[str, list[int]],
            held: dict[str, set[int]] | None = None) -> list[NodeResult]:
    """Per node: which of seqs 1..produced arrived, and how many arrived out of order. A seq
    that did not arrive but is still unacked in the stopped node's journal (`held`: it was
    being sent when the node stopped) is held, not missing: the node sends it after boot."""
    results = []
    for node, last in sorted(produced.items()):
        seqs = arrived.get(node, [])
        got = set(seqs)
        late = sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b < a)
        kept = (held or {}).get(node, set())
        absent = [s for s in range(1, last + 1) if s not in got]
        results.append(NodeResult(node, last, len(got), [s for s in absent if s not in kept],
                                  late, sum(1 for s in absent if s in kept)))
    return results


class Demo:
    """Owns every process it starts; `run()` always stops them all before returning."""

    def __init__(self, options: DemoOptions) -> None:
        self.o = options
        self.run_dir = options.run_dir or Path(tempfile.mkdtemp(prefix="roadside-demo-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.receiver: procs.ReceiverProcess | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.sim: Simulation | None = None
        self.status_url = ""
        self.tty = sys.stdout.isatty()
        self.live: Live | None = None       # the live table on a terminal, while watching
        self.started = time.monotonic()
        self.ota = DemoOta(self.run_dir) if options.ota else None
        self.ota_task: asyncio.Task[None] | None = None

    # -- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        uplink = self.o.uplink
        if uplink is None:
            self.receiver = await asyncio.to_thread(
                procs.start_receiver, self.run_dir / "receiver.sqlite",
                self.run_dir / "logs" / "receiver.log", fail_rate=self.o.fail_rate,
                fail_seed=1)
            uplink = self.receiver.batches_url
        self.sim = Simulation.mixed(self.run_dir, distribute(self.o.roles, self.o.nodes),
                                    {**self.o.scenarios, "water": self.o.scenario},
                                    self.o.speed, config=self.o.node_config)
        if self.ota is not None:     # the nodes accept bundles made with the demo's key
            for node in self.sim.nodes:
                node.spec.ota_key = self.ota.key
            build = asyncio.create_task(self.ota.build())
        await self.sim.start()
        port = free_port()
        self.status_url = f"http://127.0.0.1:{port}/status"
        settings = self.o.settings
        if self.ota is not None and settings.ota_retry_s is None:
            # a node in the flood's alarm answers the update busy: offered again soon, in
            # the demo's fast simulated time
            settings = replace(settings, ota_retry_s=2.0)
        config = gateway_toml.write(
            self.run_dir / "gateway.toml", list(self.sim.gateway_ports().values()),
            self.run_dir / "gateway-data", uplink, f"127.0.0.1:{port}", settings)
        self.start_gateway(config)
        self.say(f"run directory: {self.run_dir}")
        if self.ota is not None:
            await build
            self.say(f"ota: built {self.ota.path.name}; pushed once every node said HELLO")

    def start_gateway(self, config: Path | None = None) -> None:
        config = config or self.run_dir / "gateway.toml"
        self.gateway = procs.spawn(
            [sys.executable, "-m", "roadside.gateway.daemon", "--config", str(config)],
            self.run_dir / "logs" / "gateway.log")

    def start_ota(self, session: aiohttp.ClientSession) -> None:
        """With --ota: the rollout, beside the watching (its lines go above the live view)."""
        if self.ota is not None:
            self.ota_task = asyncio.create_task(self.ota.run(
                session, self.status_url.removesuffix("/status"),
                self.run_dir / "gateway-data", self.o.nodes, self.say))

    async def stop(self) -> None:
        if self.ota_task is not None:
            self.ota_task.cancel()
            await asyncio.gather(self.ota_task, return_exceptions=True)
        if self.sim is not None:
            await self.sim.stop()
        for proc in (self.gateway, self.receiver.proc if self.receiver else None):
            if proc is not None:
                await asyncio.to_thread(procs.stop, proc)

    # -- observing -----------------------------------------------------------------------

    async def _get_json(self, session: aiohttp.ClientSession, url: str) -> dict | None:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status != 200:
                    return None
                return json.loads(await resp.text())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def snapshot(self, session: aiohttp.ClientSession) -> tuple[dict | None, dict | None]:
        status = await self._get_json(session, self.status_url)
        stats = None
        if self.receiver is not None:
            stats = await self._get_json(session, self.receiver.url + "/stats")
        return status, stats

    def gateway_died(self) -> str | None:
        if self.gateway is not None and self.gateway.poll() is not None:
            log = self.run_dir / "logs" / "gateway.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            return f"the gateway exited with status {self.gateway.returncode}: " + " | ".join(tail)
        return None

    def say(self, line: str) -> None:
        print(line, flush=True)

    def show(self, status: dict | None, stats: dict | None, last_progress: list[float]) -> None:
        elapsed = time.monotonic() - self.started
        if self.tty:
            readings = {}
            if self.receiver is not None and self.receiver.db.exists():
                try:
                    readings = latest_readings(self.receiver.db)
                except Exception:  # noqa: BLE001 - the view must not die on a busy db
                    readings = {}
            assert self.sim is not None
            states = {n.spec.node_id: n.state for n in self.sim.nodes}
            view = render(elapsed, list(states), states, status, stats, readings)
            if self.live is None:
                self.live = Live(view, auto_refresh=False, redirect_stderr=False)
                self.live.start()
            self.live.update(view, refresh=True)
        elif elapsed - last_progress[0] >= PROGRESS_EVERY_S:
            last_progress[0] = elapsed
            self.say(progress_line(elapsed, status, stats))

    async def watch(self, session: aiohttp.ClientSession, until: float | None,
                    stop: asyncio.Event) -> None:
        last = [-PROGRESS_EVERY_S]
        try:
            while not stop.is_set() and (until is None or time.monotonic() < until):
                died = self.gateway_died()
                if died:
                    raise LaunchError(died)
                status, stats = await self.snapshot(session)
                self.show(status, stats, last)
                try:
                    await asyncio.wait_for(stop.wait(), REFRESH_S)
                except TimeoutError:
                    pass
        finally:
            if self.live is not None:   # the last frame stays on screen, the cursor returns
                self.live.stop()
                self.live = None

    # -- the end: drain and check --------------------------------------------------------

    def produced(self) -> dict[str, int]:
        assert self.sim is not None
        out = {}
        for node in self.sim.nodes:
            try:
                out[node.spec.node_id] = last_seq(node.dir, node.log)
            except NodeStateError as exc:
                raise ToolError(str(exc)) from exc
        return out

    def held(self) -> dict[str, set[int]]:
        """Per node: seqs left unacked in its journal (read from its flash image)."""
        assert self.sim is not None
        return {n.spec.node_id: held_seqs(n.dir) for n in self.sim.nodes}

    async def drain(self, session: aiohttp.ClientSession, produced: dict[str, int],
                    held: dict[str, set[int]] | None = None) -> Any:
        """Wait until the receiver holds every produced seq (but those still held by the
        stopped nodes, which may or may not have arrived) and the queue is empty (bounded)."""
        assert self.receiver is not None
        deadline = time.monotonic() + self.o.drain_timeout
        depth: Any = None
        while time.monotonic() < deadline:
            status, stats = await self.snapshot(session)
            depth = queue_depth(status)
            nodes = (stats or {}).get("nodes") or {}
            complete = all(nodes.get(n, {}).get("records", 0) >= last - len(
                               {s for s in (held or {}).get(n, ()) if s <= last})
                           for n, last in produced.items())
            if complete and depth in (0, None) and status is not None:
                return depth
            await asyncio.sleep(REFRESH_S)
        self.say(f"gave up waiting after {self.o.drain_timeout:.0f} s (queue depth {depth})")
        return depth

    async def finish(self, session: aiohttp.ClientSession) -> Summary:
        assert self.sim is not None and self.receiver is not None
        self.say("stopping the nodes; waiting for the gateway to deliver everything")
        await self.sim.stop(keep_cables=True)
        produced = self.produced()
        held = await asyncio.to_thread(self.held)
        depth = await self.drain(session, produced, held)
        _, stats = await self.snapshot(session)
        results = compare(produced, read_seqs(self.receiver.db), held)
        return Summary(results, (stats or {}).get("duplicate_records", -1),
                       (stats or {}).get("duplicate_batches", 0), depth)


@dataclass
class Handover:
    """`--uplink`: what the gateway handed over to the user's backend before the demo stopped."""

    url: str
    drained: bool            # the gateway's queue emptied within the drain timeout
    delivered: int | None    # records the gateway delivered (2xx) since it started
    queued: Any              # records still in its queue (0 when drained)
    dead_letters: int        # batches the backend refused for good (4xx): not delivered
    held: int                # records the stopped nodes still held unacknowledged
    timeout: float
    uplinks: str = "-"
    run_dir: Path = Path("RUN_DIR")

    @property
    def ok(self) -> bool:
        return self.drained and self.delivered is not None and not self.dead_letters

    def lines(self) -> list[str]:
        if self.delivered is None:
            out = [f"handed over an unknown number of records to {self.url}: the gateway's "
                   "/status did not answer"]
        else:
            out = [f"handed over {self.delivered} records to {self.url}; gateway queue "
                   + ("empty" if self.drained else f"still holds {self.queued}")]
        if not self.drained:
            out.append(f"gave up waiting after {self.timeout:.0f} s (uplinks: {self.uplinks}): "
                       "the records left stay in the gateway's queue in "
                       f"{self.run_dir / 'gateway-data'}; check that the backend answers 2xx")
        if self.dead_letters:
            out.append(f"the backend refused {self.dead_letters} batches for good (4xx): "
                       "they are dead letters: `roadside gateway dead-letters list --config "
                       f"{self.run_dir / 'gateway.toml'}`")
        if self.held:
            out.append(f"{self.held} records were still unacknowledged in the stopped nodes' "
                       "journals (not lost: a node sends them after its next boot)")
        return out


async def hand_over(demo: Demo, session: aiohttp.ClientSession) -> Handover:
    """Stop the nodes, then read the gateway's /status until its queue is empty (bounded).

    Empty means no record held and no batch pending on two reads in a row, so a record still
    on its way through a virtual cable when the nodes stopped is waited for too.
    """
    assert demo.sim is not None and demo.o.uplink is not None
    demo.say("stopping the nodes; waiting for the gateway to hand every record to the uplink")
    await demo.sim.stop(keep_cables=True)
    held = sum(len(seqs) for seqs in (await asyncio.to_thread(demo.held)).values())
    deadline = time.monotonic() + demo.o.drain_timeout
    status: dict | None = None
    empty_reads = 0
    while True:
        died = demo.gateway_died()
        if died:
            raise LaunchError(died)
        status = await demo._get_json(session, demo.status_url)
        q = (status or {}).get("queue") or {}
        empty = status is not None and q.get("depth") == 0 and not q.get("batches_pending")
        empty_reads = empty_reads + 1 if empty else 0
        if empty_reads >= 2 or time.monotonic() >= deadline:
            break
        await asyncio.sleep(REFRESH_S)
    q = (status or {}).get("queue") or {}
    return Handover(demo.o.uplink, empty_reads >= 2, q.get("delivered"), queue_depth(status),
                    int(q.get("dead_letters") or 0), held, demo.o.drain_timeout,
                    uplink_states(status), demo.run_dir)


async def run_demo(options: DemoOptions) -> int:
    demo = Demo(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with aiohttp.ClientSession() as session:
            await demo.start()
            demo.start_ota(session)
            until = None if options.duration is None else time.monotonic() + options.duration
            await demo.watch(session, until, stop)
            if stop.is_set():
                demo.say("interrupted; stopping everything")
                return 130
            if options.duration is None:
                return 0
            if options.uplink is not None:
                handover = await hand_over(demo, session)
                for line in handover.lines():
                    demo.say(line)
                return 0 if handover.ok else 1
            summary = await demo.finish(session)
            for line in summary.lines():
                demo.say(line)
            if demo.ota is not None:
                result = demo.ota.result
                if result is None or result["state"] != "done":
                    demo.say("ota: the update did not reach every node within --duration"
                             if result is None else f"ota: the update {result['state']}")
                    return 1
            return 0 if summary.ok else 1
    finally:
        await demo.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(options: DemoOptions) -> int:
    """Blocking entry for the CLI."""
    try:
        return asyncio.run(run_demo(options))
    finally:
        procs.stop_all()
