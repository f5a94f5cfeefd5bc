"""One bundle to one node (PROTOCOL.md 2.6): OFFER, CHUNKs from the node's `have`, the switch,
the trial, and what the node answered at each step.

The node's OTA_STATE is the truth: the gateway resumes at the `have` it reports (after a link
loss, a gateway restart, a node reboot), rewinds when it reports an end behind what was sent,
and offers again when it stops answering. Chunks are paced: at most WINDOW beyond the node's
`have`, at most `ota.link_share` of the link's byte rate, and only when the link is quiet (no
ACK, TIME or COMMAND waiting to go out, no message of the node waiting to be answered), so
records keep flowing and a priority record's ACK never queues behind a chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .. import logs
from .. import protocol as p
from ..commands import CommandError
from .bundle import Bundle

if TYPE_CHECKING:
    from ..commands import Commander
    from ..config import OtaConfig
    from ..links.base import Link
    from ..session import SessionManager

log = logging.getLogger("roadside.gateway.ota")

WINDOW = 4                  # chunks beyond the node's `have`
DEFAULT_BYTE_RATE = 11_520  # a link that does not know its rate: as 115,200 baud serial
# A node that answers an OFFER or CHUNK with ERROR (it could not handle it, e.g. out of
# memory) is offered again after ERROR_RETRY_S; ERRORS_MAX such answers without progress in
# between fail the transfer with the node's text.
ERROR_RETRY_S = 1.0
ERRORS_MAX = 3

# The gateway's view of a transfer. pending: not offered yet (waiting for its turn or for the
# node's session); offered: OFFER sent; busy: refused busy, offered again after ota.retry_s;
# receiving: chunks flowing; staged: the node holds it all, switch to be sent; switching:
# ota.switch answered ok (the node reboots); trial: the node runs it, not yet confirmed.
# Ends: done, failed (reason), halted (the rollout stopped before it), cancelled (an operator
# stopped the rollout before it), skipped (not for it).
ACTIVE = ("pending", "offered", "busy", "receiving", "staged", "switching", "trial")
ENDS = ("done", "failed", "halted", "cancelled", "skipped")


class Host(Protocol):
    """What a transfer needs of the OTA service (manager.py's OtaManager)."""

    config: OtaConfig
    sessions: SessionManager
    commander: Commander

    def changed(self, t: Transfer, progress: bool = False) -> None: ...

    def chunk_sent(self, frame_bytes: int) -> None: ...

    def busy_refused(self, t: Transfer) -> None: ...


class Transfer:
    def __init__(self, manager: Host, rollout: int, node: str, bundle: Bundle,
                 force: bool = False, state: str = "pending",
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.manager = manager
        self.rollout = rollout
        self.node = node
        self.bundle = bundle
        self.force = force
        self.state = state
        self.restored = state != "pending"     # loaded after a restart: ask the node first
        self.have = 0
        self.sent = 0                  # payload offset of the next chunk to send
        self.reason: str | None = None
        self.attempts = 0              # OFFERs sent
        self.chunks = 0                # chunks sent (resent ones too)
        self.rewinds = 0
        self.errors = 0                # ERRORs from the node since the last progress
        self.busy = 0                  # OFFERs refused busy (an alarm, an unacked PRIORITY)
        self.mono = mono
        self.changed = asyncio.Event()
        self.started = mono()
        self.offered_at: float | None = None   # the first OFFER
        self.ended_at: float | None = None
        self.progress_at = mono()      # the last time `have` grew or the state moved on
        self.heard_at = mono()         # the last OTA_STATE from the node
        self.retry_at = 0.0
        self.switch_at = 0.0
        self._offer = state == "pending"
        self._offer_later = False      # offer again at retry_at (after a node ERROR)
        self._ask = state != "pending"
        self._switch_task: asyncio.Task[None] | None = None
        self._ask_task: asyncio.Task[bool | None] | None = None
        self._next_at = 0.0            # pacing: the earliest time of the next chunk

    # -- views ----------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.bundle.manifest.size

    @property
    def ended(self) -> bool:
        return self.state in ENDS

    @property
    def config(self) -> OtaConfig:
        return self.manager.config

    @property
    def sessions(self) -> SessionManager:
        return self.manager.sessions

    def doc(self) -> dict[str, object]:
        return {"node": self.node, "state": self.state, "have": self.have, "size": self.size,
                "percent": round(100 * self.have / self.size, 1) if self.size else 100.0,
                "reason": self.reason, "attempts": self.attempts, "chunks": self.chunks,
                "rewinds": self.rewinds, "busy": self.busy, "version": self.bundle.version,
                # from the first OFFER to the end (or now): transfer, switch and trial
                "seconds": None if self.offered_at is None else
                round((self.ended_at or self.mono()) - self.offered_at, 1)}

    # -- state changes ----------------------------------------------------------------------------
    def _set(self, state: str, reason: str | None = None) -> None:
        if state != self.state or reason != self.reason:
            self.state, self.reason = state, reason
            self.progress_at = self.mono()
            if state in ENDS:
                self.ended_at = self.progress_at
            level = logging.WARNING if state == "failed" else logging.INFO
            log.log(level, f"ota {self.node}: {state}" + (f" ({reason})" if reason else "")
                    + f", {self.have}/{self.size} bytes of {self.bundle.describe()}",
                    extra=logs.fields(node=self.node, state=state, reason=reason,
                                      rollout=self.rollout, have=self.have))
            self.manager.changed(self)
        self.changed.set()

    def stop(self, state: str, reason: str) -> None:
        """The rollout ends this transfer (halted, cancelled, skipped) unless it is past the
        switch."""
        if self.state in ("pending", "offered", "busy", "receiving", "staged"):
            self._set(state, reason)

    def fail(self, reason: str) -> None:
        if not self.ended:
            self._set("failed", reason)

    def on_hello(self) -> None:
        """The node (re)started its session: chunks in flight are lost; ask where it stands."""
        if self.ended or self.state == "pending" and not self.restored:
            self.changed.set()
            return
        self.sent = self.have
        self._ask = True
        self.changed.set()

    def on_error(self, msg: p.Error) -> None:
        """The node answered ERROR: one to an OTA message (its type, or none when it could
        not even decode it while an OFFER waits) counts; ERRORS_MAX in a row fail it."""
        if self.ended or self.state not in ("offered", "receiving"):
            return
        if msg.ref_type not in (p.OTA_OFFER, p.OTA_CHUNK) and not (
                msg.ref_type is None and self.state == "offered"):
            return
        self.errors += 1
        if self.errors >= ERRORS_MAX:
            self.fail(f"node error: {msg.message}")
            return
        self.heard_at = self.mono()
        self.retry_at = self.mono() + ERROR_RETRY_S
        self.sent = self.have
        self._offer_later = True
        self.changed.set()

    def on_state(self, msg: p.OtaState) -> None:
        if self.ended:
            return
        self.heard_at = self.mono()
        self.errors = 0
        ours = msg.tag == self.bundle.tag
        if msg.state in ("trial", "done", "rolled_back") and (
                ours or msg.tag is None and self.state in ("switching", "trial")):
            if msg.state == "trial":
                self._set("trial")
            elif msg.state == "done":
                self.have = self.size
                self._set("done")
            else:
                self._set("failed", f"rolled_back: {msg.reason or 'no reason given'}")
            return
        if msg.state == "refused" and (ours or msg.tag is None):
            self.restored = False
            if msg.reason == "busy":
                # Not a failure: the node is busy with an alarm (or an update on trial). It is
                # offered again after ota.retry_s for as long as that lasts; each offer moves
                # the state, so the timeout does not run out while it is busy.
                self.busy += 1
                self.manager.busy_refused(self)
                self.retry_at = self.mono() + self.config.retry_s
                self._set("busy", "busy")
            else:
                self._set("failed", f"refused: {msg.reason or 'no reason given'}")
            return
        if self.state in ("switching", "trial"):
            if msg.state == "idle" and msg.version == self.bundle.version:
                self.have = self.size
                self._set("done")
            elif msg.state == "idle":
                self._set("failed", "rolled_back: the node runs"
                                    f" {msg.version or 'another version'} and holds nothing")
            return
        if not ours or msg.state == "idle":
            # The node holds nothing, or another bundle: offer this one (it drops the other).
            if self.state != "busy":
                self._offer = True
            self.changed.set()
            return
        self.restored = False
        if msg.state == "staged":
            self.have = self.sent = self.size
            self._set("staged")
        elif msg.state == "receiving":
            if msg.have > self.have:
                self.progress_at = self.mono()
            elif self.sent > msg.have and self.state == "receiving":
                self.rewinds += 1        # an end behind what was sent: a chunk was lost/bad
                self.sent = msg.have
            if self.state != "receiving":
                self.sent = msg.have
            self.have = msg.have
            self.sent = max(self.sent, self.have)
            self._set("receiving")
            self.manager.changed(self, progress=True)

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Drive the transfer until it ends (done, failed, halted, skipped)."""
        try:
            while not self.ended:
                self.changed.clear()
                wait = self._step()
                if self.ended:
                    break
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self.changed.wait()
                else:
                    await asyncio.sleep(0)
        finally:
            for task in (self._switch_task, self._ask_task):
                if task is not None:
                    task.cancel()

    def _link(self) -> Link | None:
        for session in self.sessions.sessions.values():
            if session.node == self.node and session.link.is_open:
                return session.link
        return None

    def _step(self) -> float:
        """Do what can be done now; returns how long to wait for a change at most."""
        now = self.mono()
        cfg = self.config
        if now - self.progress_at > (cfg.trial_s if self.state in ("switching", "trial")
                                     else cfg.timeout_s):
            self.fail(f"timeout: no progress in {self.state} for"
                      f" {now - self.progress_at:.0f} s")
            return 0
        link = self._link()
        if link is None:
            return 1.0
        if self._ask:
            self._ask = False
            self._ask_task = asyncio.create_task(self._command("ota.state", None))
            return 0.2
        if self.state == "busy" or self._offer_later:
            if now < self.retry_at:
                return self.retry_at - now
            self._offer, self._offer_later = True, False
        if self._offer:
            self._offer = False
            self.attempts += 1
            if self.offered_at is None:
                self.offered_at = now
            self.sent = self.have
            self.heard_at = now
            link.send(p.encode_frame(p.OtaOffer(self.bundle.kind, self.bundle.manifest_bytes,
                                                self.bundle.mac, self.force)))
            if self.state in ("pending", "busy"):
                self._set("offered")
            return 0.05
        if self.state in ("offered", "receiving") and now - self.heard_at > cfg.stall_s:
            # Nothing heard (an OFFER or chunks lost on the way): the OFFER again makes the
            # node say where it stands.
            log.info(f"ota {self.node}: no OTA_STATE for {now - self.heard_at:.0f} s;"
                     f" offering again", extra=logs.fields(node=self.node))
            self._offer = True
            return 0
        if self.state == "staged":
            if self._switch_task is None or self._switch_task.done():
                if now >= self.switch_at:
                    self.switch_at = now + cfg.stall_s
                    self._switch_task = asyncio.create_task(self._switch())
            return 0.5
        if self.state != "receiving":
            return 0.5
        chunk = link.ota_chunk
        if self.sent >= self.size or self.sent >= self.have + WINDOW * chunk:
            return 0.5          # the window is full: wait for the node's next OTA_STATE
        if not self.sessions.quiet(link):
            return 0.002
        if now < self._next_at:
            return self._next_at - now
        data = self.bundle.payload[self.sent:self.sent + chunk]
        frame = p.encode_frame(p.OtaChunk(self.bundle.tag, self.sent, data))
        if not link.send(frame):
            return 0.1
        self.sent += len(data)
        self.chunks += 1
        rate = (link.byte_rate or DEFAULT_BYTE_RATE) * cfg.link_share
        self._next_at = max(now, self._next_at) + len(frame) / rate
        self.manager.chunk_sent(len(frame))
        return 0

    async def _command(self, name: str, args: dict[str, object] | None) -> bool | None:
        """Run a node command for this transfer; True/False on a REPLY, None without one."""
        try:
            result = await self.manager.commander.run(self.node, name, args, who="ota",
                                                      origin=f"rollout {self.rollout}")
        except CommandError as exc:
            log.info(f"ota {self.node}: {name}: {exc}", extra=logs.fields(node=self.node))
            return None
        if not result.ok and name == "ota.switch":
            self.fail(f"switch refused: {result.error}")
        return result.ok

    async def _switch(self) -> None:
        ok = await self._command("ota.switch", {"tag": self.bundle.tag})
        if ok and self.state == "staged":
            self._set("switching")
