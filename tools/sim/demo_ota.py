"""`roadside demo --ota`: an update rolling through the demo's nodes.

The nodes get a fresh ota key in their flash at start; meanwhile the node app is built into a
bundle one patch version up (`roadside ota build`'s builder, for the sim board and every
role). Once every node has said HELLO, the bundle is pushed through the gateway's local API to
the whole site with a canary step (the first node, then the rest), and each node's progress
and outcome is told as it changes, while the nodes keep reporting.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from roadside.gateway import api_token

from ..ota import bundle as builder

POLL_S = 0.5
HELLO_TIMEOUT_S = 60.0


def bumped(version: str) -> str:
    """0.1.0 -> 0.1.1: the demo's update is the same app one patch version up."""
    parts = version.split(".")
    return ".".join(parts[:-1] + [str(int(parts[-1]) + 1)])


class DemoOta:
    def __init__(self, run_dir: Path, canary: int = 1) -> None:
        self.key = os.urandom(32)
        self.run_dir = run_dir
        self.canary = canary
        self.version = bumped(builder.package_version(builder.PACKAGE))
        self.path = run_dir / f"app-{self.version}.rsb"
        self.result: dict[str, Any] | None = None   # the rollout as it ended

    async def build(self) -> None:
        b = await asyncio.to_thread(builder.build_app, self.key, version=self.version,
                                    board_names=["sim"])
        await asyncio.to_thread(builder.write, b, self.path)

    async def run(self, session: aiohttp.ClientSession, base: str, data_dir: Path,
                  nodes: int, say: Callable[[str], None]) -> None:
        """Wait for every node's HELLO, push to the site, tell the progress until it ends."""
        deadline = time.monotonic() + HELLO_TIMEOUT_S
        while True:
            doc = await _get(session, f"{base}/status")
            if doc is not None and sum(1 for n in doc["nodes"] if n.get("fw")) >= nodes:
                break
            if time.monotonic() > deadline:
                say(f"ota: not every node said HELLO within {HELLO_TIMEOUT_S:.0f} s;"
                    f" no update pushed")
                return
            await asyncio.sleep(POLL_S)
        token = api_token.read(api_token.path_in(data_dir))
        headers = {"Content-Type": "application/octet-stream",
                   "Authorization": f"Bearer {token}"}
        async with session.post(f"{base}/ota/rollouts", data=self.path.read_bytes(),
                                params={"site": "1", "canary": str(self.canary),
                                        "who": "roadside demo"}, headers=headers) as resp:
            started = await resp.json()
            if resp.status != 202:
                say(f"ota: the gateway refused the rollout: {started.get('error')}")
                return
        say(f"ota: rollout {started['id']}: app {self.version} to {len(started['nodes'])}"
            f" nodes, canary {self.canary} first ({self.path.name})")
        seen: dict[str, tuple[str, int]] = {}
        while True:
            doc = await _get(session, f"{base}/ota/rollouts/{started['id']}", headers)
            if doc is not None:
                for n in doc["nodes"]:
                    step = int(n.get("percent") or 0) // 25 * 25
                    now = (n["state"], step if n["state"] == "receiving" else 0)
                    if seen.get(n["node"]) != now:
                        seen[n["node"]] = now
                        extra = f" {step}%" if n["state"] == "receiving" else ""
                        why = f" ({n['reason']})" if n.get("reason") else ""
                        say(f"ota: {n['node']} {n['state']}{extra}{why}")
                if doc["state"] != "running":
                    self.result = doc
                    say(f"ota: rollout {doc['id']} {doc['state']}"
                        + (f": {doc['reason']}" if doc.get("reason") else
                           f": {len(doc['nodes'])} nodes run {self.version}"))
                    return
            await asyncio.sleep(POLL_S)


async def _get(session: aiohttp.ClientSession, url: str,
               headers: dict[str, str] | None = None) -> dict[str, Any] | None:
    try:
        async with session.get(url, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return await resp.json() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
