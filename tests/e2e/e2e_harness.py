"""End-to-end harness: real MicroPython nodes on virtual cables, the gateway daemon as a
subprocess, the reference receiver as a subprocess; all on loopback, free ports, bounded, and
stopped in `finally` whatever happens."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from roadside.tools.sim import procs
from roadside.tools.sim.demo import Demo, DemoOptions, Summary
from roadside.tools.sim.gateway_toml import GatewaySettings

# Simulated seconds per real second: the flood scenario's rise happens within the test.
SPEED = 20.0
# Hard bound for one test, start to finish.
TEST_TIMEOUT_S = 100.0


def options(tmp_path: Path, **over: Any) -> DemoOptions:
    base = dict(nodes=3, run_dir=tmp_path / "run", speed=SPEED, drain_timeout=40.0,
                settings=GatewaySettings(max_records=50, max_age_s=0.5))
    base.update(over)
    return DemoOptions(**base)


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def gateway_status(demo: Demo, session: aiohttp.ClientSession) -> dict | None:
    return await demo._get_json(session, demo.status_url)


def run_chain(opts: DemoOptions,
              body: Callable[[Demo, aiohttp.ClientSession], Awaitable[None]]) -> Summary:
    """Start everything, run `body`, stop the nodes, drain, and return the delivery summary."""

    async def main() -> Summary:
        demo = Demo(opts)
        try:
            async with aiohttp.ClientSession() as session:
                await demo.start()
                await wait_until(lambda: _answers(demo, session), 30, "the gateway's /status")
                await body(demo, session)
                summary = await demo.finish(session)
                print("\n".join(summary.lines()))
                return summary
        finally:
            await demo.stop()
            _dump_logs(demo.run_dir)

    try:
        return asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT_S))
    finally:
        procs.stop_all()


async def _answers(demo: Demo, session: aiohttp.ClientSession) -> bool:
    died = demo.gateway_died()
    if died:
        raise AssertionError(died)
    return await gateway_status(demo, session) is not None


def _dump_logs(run_dir: Path) -> None:
    """Show the tail of every log in the test report (pytest shows it only on failure)."""
    for log in sorted((run_dir / "logs").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-15:]
        print(f"--- {log.name}\n" + "\n".join(lines))


def received_records(db: Path) -> list[dict]:
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT node, seq, kind, data FROM records ORDER BY arrival").fetchall()
    finally:
        con.close()
    return [{"node": n, "seq": s, "kind": k, "data": json.loads(d)} for n, s, k, d in rows]
