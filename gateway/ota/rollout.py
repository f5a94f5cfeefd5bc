"""A rollout: one bundle to one node, a list, or every node of the site, with a canary step
(the first `canary` nodes first; the rest only once every canary reached `done`) and a halt
on the first failure (refused other than busy, rolled back, timeout): transfers not yet past
the switch stop (`halted`), those already switching run to their end. An operator's cancel
(`cancel`) stops it the same way, with `cancelled` for the rollout and those transfers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from .. import logs
from .bundle import Bundle
from .transfer import Host, Transfer

log = logging.getLogger("roadside.gateway.ota")


class RolloutHost(Host, Protocol):
    """What a rollout needs of the OTA service (manager.py's OtaManager)."""

    def rollout_ended(self, rollout: Rollout) -> None: ...


class Rollout:
    def __init__(self, manager: RolloutHost, rid: int, bundle: Bundle, nodes: list[str],
                 canary: int, force: bool, who: str, origin: str,
                 states: dict[str, str] | None = None) -> None:
        self.manager = manager
        self.id = rid
        self.bundle = bundle
        self.nodes = nodes
        self.canary = canary
        self.force = force
        self.who = who
        self.origin = origin
        self.state = "running"
        self.reason: str | None = None
        self.phase = "canary" if canary else "rest"
        self.transfers = {n: Transfer(manager, rid, n, bundle, force,
                                      (states or {}).get(n, "pending")) for n in nodes}

    def doc(self) -> dict[str, object]:
        return {"id": self.id, "version": self.bundle.version, "kind": self.bundle.kind,
                "tag": self.bundle.tag.hex(), "size": self.bundle.manifest.size,
                "state": self.state, "reason": self.reason, "phase": self.phase,
                "canary": self.canary, "who": self.who,
                "nodes": [t.doc() for t in self.transfers.values()]}

    async def run(self) -> None:
        # The canaries: the first `canary` nodes the bundle is for (skipped ones do not count).
        eligible = [n for n in self.nodes if self.transfers[n].state != "skipped"]
        groups = [("canary", eligible[:self.canary]), ("rest", eligible[self.canary:])]
        try:
            for phase, group in groups:
                if not group or self.state != "running":
                    continue
                self.phase = phase
                failed = await self._run_group([self.transfers[n] for n in group])
                if self.state != "running":         # cancelled meanwhile
                    return
                if failed is not None:
                    self._halt(f"{failed.node}: {failed.reason}")
                    return
            if self.state != "running":
                return
            self.state = "done"
            log.info(f"ota rollout {self.id} of {self.bundle.describe()} done on"
                     f" {len(self.nodes)} nodes", extra=logs.fields(rollout=self.id))
        finally:
            if self.state != "running":     # else cancelled (the gateway stops): resumed
                self.manager.rollout_ended(self)

    async def _run_group(self, group: list[Transfer]) -> Transfer | None:
        """Run the group's transfers together; the first failed one (None if all done)."""
        tasks = {asyncio.create_task(t.run(), name=f"ota {t.node}"): t for t in group
                 if not t.ended}
        failed = next((t for t in group if t.state == "failed"), None)
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    t = tasks.pop(task)
                    if t.state == "failed" and failed is None:
                        failed = t
                        for other in group:
                            other.stop("halted", f"rollout halted: {t.node} {t.reason}")
        finally:
            for task in tasks:
                task.cancel()
        if failed is None:
            failed = next((t for t in group if t.state != "done" and t.state != "skipped"),
                          None)
        return failed

    def _halt(self, reason: str) -> None:
        self.state, self.reason = "halted", reason
        for t in self.transfers.values():
            t.stop("halted", f"rollout halted: {reason}")
        log.warning(f"ota rollout {self.id} of {self.bundle.describe()} halted: {reason}",
                    extra=logs.fields(rollout=self.id, reason=reason))

    def cancel(self, who: str) -> None:
        """An operator stops the rollout: transfers not yet past the switch end `cancelled` (no
        more chunks; the node keeps what it staged, so the same bundle pushed again resumes,
        another bundle's OFFER drops it); nodes already switching run to their end and are
        still reported. The rollout ends when those have."""
        self.state, self.reason = "cancelled", f"cancelled by {who}"
        for t in self.transfers.values():
            t.stop("cancelled", self.reason)
        log.warning(f"ota rollout {self.id} of {self.bundle.describe()} cancelled by {who}",
                    extra=logs.fields(rollout=self.id, who=who))
