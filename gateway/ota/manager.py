"""The gateway's OTA service: starts rollouts (local API, MQTT command topic), routes the
nodes' OTA_STATE and HELLOs to their transfers, keeps the state in data_dir/ota.sqlite and
resumes running rollouts after a restart, and reports to /status, /metrics and the command
audit log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import ids, logs
from .. import protocol as p
from ..errors import GatewayError
from .bundle import BundleError, read
from .rollout import Rollout
from .store import OtaStore
from .transfer import ACTIVE, Transfer

if TYPE_CHECKING:
    from ..commands import Commander
    from ..config import OtaConfig
    from ..session import Session, SessionManager

log = logging.getLogger("roadside.gateway.ota")

PROGRESS_SAVE_S = 2.0      # `have` is written to the file at most this often per transfer
KEEP_ENDED = 10            # ended rollouts kept in memory for /status


class OtaError(GatewayError):
    """A rollout that cannot start; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class OtaManager:
    def __init__(self, config: OtaConfig, data_dir: Path, sessions: SessionManager,
                 commander: Commander) -> None:
        self.config = config
        self.sessions = sessions
        self.commander = commander
        self.store = OtaStore(data_dir)
        self.rollouts: dict[int, Rollout] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.chunks_sent = 0
        self.chunk_bytes = 0
        self.outcomes: Counter[str] = Counter()     # transfers ended, by state
        self.refusals: Counter[str] = Counter()     # failed transfers, by reason word
        self.busy = 0                               # OFFERs refused busy (retried later)
        self._saved: dict[tuple[int, str], float] = {}
        # Told of each rollout that ends (done, halted, cancelled): the daemon sets it to tell
        # its MQTT uplinks, which publish the final outcome of the rollouts they started.
        self.on_ended: Callable[[Rollout], None] | None = None
        sessions.on_ota_state = self.on_state
        sessions.on_hello = self.on_hello
        sessions.on_node_error = self.on_node_error

    # -- the sessions' hooks --------------------------------------------------------------------
    def _active(self, node: str) -> Transfer | None:
        for r in self.rollouts.values():
            t = r.transfers.get(node)
            if t is not None and t.state in ACTIVE:
                return t
        return None

    def on_state(self, session: Session, msg: p.OtaState) -> None:
        t = self._active(session.node)
        # progress reports come every 2 KB: debug; every other state: info
        log.log(logging.DEBUG if msg.state == "receiving" else logging.INFO,
                f"ota {session.node}: OTA_STATE {msg.state} have={msg.have}"
                 + (f" reason={msg.reason}" if msg.reason else "")
                 + (f" version={msg.version}" if msg.version else ""),
                 extra=logs.fields(node=session.node, state=msg.state, have=msg.have))
        if t is not None:
            t.on_state(msg)

    def on_hello(self, session: Session) -> None:
        t = self._active(session.node)
        if t is not None:
            t.on_hello()

    def on_node_error(self, session: Session, msg: p.Error) -> None:
        t = self._active(session.node)
        if t is not None:
            t.on_error(msg)

    def busy_refused(self, t: Transfer) -> None:
        self.busy += 1

    def chunk_sent(self, frame_bytes: int) -> None:
        self.chunks_sent += 1
        self.chunk_bytes += frame_bytes

    # -- rollouts -------------------------------------------------------------------------------
    def start(self, data: bytes, nodes: list[str] | None, canary: int = 1,
              force: bool = False, who: str = "unknown", origin: str = "local") -> Rollout:
        """Check and start a rollout of the bundle `data` to `nodes` (None: every node of the
        site); OtaError(400/404/409) when it cannot start."""
        try:
            bundle = read(data)
        except BundleError as exc:
            raise OtaError(str(exc), 400) from None
        if not 0 <= canary <= 1000:
            raise OtaError(f"canary: must be 0..1000, got {canary}", 400)
        known = self.sessions.nodes
        if nodes is None:
            order = sorted(known)
            if not order:
                raise OtaError("site: no node has said HELLO to this gateway yet", 409)
        else:
            if not nodes:
                raise OtaError("nodes: give at least one node id, or the whole site", 400)
            for n in nodes:
                if not ids.valid(n):
                    raise OtaError(f"node: bad node id {ids.shown(n)}; use {ids.RULE}", 400)
                if n not in known:
                    raise OtaError(f"node {n!r} is unknown to this gateway; known:"
                                   f" {', '.join(sorted(known)) or 'none yet'}", 404)
            order = list(dict.fromkeys(nodes))
        for n in order:
            t = self._active(n)
            if t is not None:
                raise OtaError(f"node {n!r} is already in rollout {t.rollout} ({t.state});"
                               f" wait for it to end", 409)
        tag = bundle.tag.hex()
        self.store.keep_bundle(tag, bundle.raw)
        rid = self.store.add_rollout(tag, bundle.kind, bundle.version, order, canary, force,
                                     who, origin, bundle.manifest.size)
        rollout = Rollout(self, rid, bundle, order, canary, force, who, origin)
        self.rollouts[rid] = rollout
        # What the gateway can check itself: the node's board and role from its HELLO. In a
        # site rollout a node the bundle is not for is skipped; a node named is a failure.
        for n, t in rollout.transfers.items():
            state = known[n]
            why = bundle.fits(state.board, state.role)
            if why is None:
                continue
            allowed = bundle.manifest.boards if why == "board" else bundle.manifest.roles
            text = (f"{why}: the bundle is for {why}s {', '.join(allowed)}, {n} is"
                    f" {state.board if why == 'board' else state.role} (gateway check)")
            if nodes is None:
                t.stop("skipped", text)
            else:
                t.fail(f"refused: {text}")
        log.info(f"ota rollout {rid}: {bundle.describe()} to {len(order)} nodes"
                 f" (canary {canary}) by {who}",
                 extra=logs.fields(rollout=rid, who=who, nodes=len(order)))
        self._launch(rollout)
        return rollout

    def cancel(self, rid: int | None, who: str = "unknown") -> Rollout:
        """Cancel rollout `rid` (None: the one running); OtaError(404/409) when there is no
        such rollout running."""
        if rid is None:
            running = sorted(r.id for r in self.rollouts.values() if r.state == "running")
            if not running:
                raise OtaError("no rollout is running on this gateway (`roadside ota status`"
                               " lists them)", 409)
            if len(running) > 1:
                raise OtaError(f"rollouts {', '.join(map(str, running))} are running; say"
                               f" which to cancel", 409)
            rid = running[0]
        rollout = self.rollouts.get(rid)
        if rollout is None or rollout.state != "running":
            doc = self.rollout_doc(rid)
            if doc is None:
                raise OtaError(f"no rollout {rid} on this gateway", 404)
            raise OtaError(f"rollout {rid} is {doc['state']} already: only a running rollout"
                           f" can be cancelled", 409)
        rollout.cancel(who)
        self.store.set_rollout(rollout.id, rollout.state, rollout.reason)   # not resumed
        return rollout

    def _launch(self, rollout: Rollout) -> None:
        self.rollouts[rollout.id] = rollout
        self.tasks[rollout.id] = asyncio.create_task(rollout.run(),
                                                     name=f"ota rollout {rollout.id}")
        ended = [rid for rid, r in self.rollouts.items() if r.state != "running"]
        for rid in ended[:-KEEP_ENDED]:
            del self.rollouts[rid]

    def resume(self) -> None:
        """At start: take up the rollouts that were running when the gateway stopped; each
        transfer asks its node where it stands (OTA_STATE) at its next HELLO."""
        for row in reversed(self.store.rollouts(running_only=True)):
            path = self.store.bundle_path(row.tag)
            try:
                bundle = read(path.read_bytes())
            except (OSError, BundleError) as exc:
                self.store.set_rollout(row.id, "halted", f"bundle {path} unreadable: {exc}")
                log.error(f"ota rollout {row.id} cannot resume: {path}: {exc}",
                          extra=logs.fields(rollout=row.id))
                continue
            saved = self.store.transfers(row.id)
            rollout = Rollout(self, row.id, bundle, row.nodes, row.canary, row.force, row.who,
                              row.origin, {n: saved[n]["state"] for n in saved})
            for n, t in rollout.transfers.items():
                t.have = t.sent = saved.get(n, {}).get("have", 0)
                t.reason = saved.get(n, {}).get("reason")
            log.info(f"ota rollout {row.id} of {bundle.describe()} resumed",
                     extra=logs.fields(rollout=row.id))
            self._launch(rollout)

    def changed(self, t: Transfer, progress: bool = False) -> None:
        """A transfer moved: keep it in the file (progress at most every PROGRESS_SAVE_S)."""
        now = time.monotonic()
        key = (t.rollout, t.node)
        if progress and now - self._saved.get(key, 0.0) < PROGRESS_SAVE_S:
            return
        self._saved[key] = now
        self.store.set_transfer(t.rollout, t.node, t.state, t.have, t.reason, t.attempts)
        if t.ended:
            self.outcomes[t.state] += 1
            if t.state == "failed" and t.reason:
                self.refusals[reason_key(t.reason)] += 1
            rollout = self.rollouts.get(t.rollout)
            asyncio.get_running_loop().create_task(self._audit(t, rollout))

    async def _audit(self, t: Transfer, rollout: Rollout | None) -> None:
        outcome = {"done": "ok", "failed": "error"}.get(t.state, t.state)   # halted, cancelled..
        try:
            await self.commander.note(
                t.node, "ota.update", {"rollout": t.rollout, "version": t.bundle.version,
                                       "tag": t.bundle.tag.hex(), "kind": t.bundle.kind},
                rollout.who if rollout else "ota", rollout.origin if rollout else "ota",
                outcome, {"state": t.state, "reason": t.reason, "have": t.have,
                          "size": t.size, "seconds": t.doc()["seconds"]})
        except Exception:  # noqa: BLE001 - the audit log must not stop a rollout
            log.exception(f"ota {t.node}: cannot write the audit row")

    def rollout_ended(self, rollout: Rollout) -> None:
        self.store.set_rollout(rollout.id, rollout.state, rollout.reason)
        if self.on_ended is not None:
            try:
                self.on_ended(rollout)
            except Exception:  # noqa: BLE001 - a report must not stop the rollout's end
                log.exception(f"ota rollout {rollout.id}: cannot report its end")

    # -- reports --------------------------------------------------------------------------------
    def document(self) -> dict[str, Any]:
        return {"rollouts": [r.doc() for r in sorted(self.rollouts.values(),
                                                     key=lambda r: -r.id)],
                "chunks_sent": self.chunks_sent, "chunk_bytes": self.chunk_bytes,
                "busy": self.busy, "link_share": self.config.link_share}

    def rollout_doc(self, rid: int) -> dict[str, Any] | None:
        r = self.rollouts.get(rid)
        if r is not None:
            return r.doc()
        for row in self.store.rollouts(limit=1000):
            if row.id == rid:
                saved = self.store.transfers(rid)
                return {"id": rid, "version": row.version, "kind": row.kind, "tag": row.tag,
                        "state": row.state, "reason": row.reason, "canary": row.canary,
                        "who": row.who,
                        "nodes": [{"node": n, **saved.get(n, {})} for n in row.nodes]}
        return None

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.store.close()


def reason_key(reason: str) -> str:
    """A failure's reason as a metric label: `refused:board`, `rolled_back:import`,
    `timeout`, `switch refused`."""
    head, _, rest = reason.partition(":")
    words = rest.split()
    if head in ("refused", "rolled_back") and words:
        return f"{head}:{words[0].rstrip(':')}"
    return head
