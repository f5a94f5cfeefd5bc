"""Per-link node sessions (PROTOCOL.md 2.2): HELLO -> TIME + ACK, RECORDS -> commit -> ACK.

A serial link carries one node, and RECORDS do not name their node, so a session belongs to a
link and is (re)bound to a node by HELLO. Records arriving on a link without a session get
ERROR 3, which makes the node say HELLO again (e.g. after a gateway restart).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from . import ids, logs
from . import protocol as p
from .errors import ProtocolError, QueueError, QueueFullError
from .links.base import Link
from .logs import Throttle
from .queue import REFUSED_JUMP, REFUSED_RESUME, Queue

log = logging.getLogger("roadside.gateway.session")

# A node that sent nothing for this long shows as "silent" (its link is still open).
SILENT_S = 60.0
# Alarm records kept in memory for /status "recent_alarms" and the status page.
RECENT_ALARMS = 50
# Node ids the gateway keeps state for (/status, /metrics, the queue's node table): a HELLO
# with a new id beyond this is refused (ERROR 6, counted) and known nodes go on as before.
MAX_NODES = 256
# Refused HELLOs kept as identity alarms for /status (one per port and claimed id).
IDENTITY_ALARMS = 32


@dataclass
class IdentityAlarm:
    """A HELLO refused for the node id it claimed, on one port (/status "identity")."""

    port: str
    node: str                 # the id claimed
    reason: str               # identity, jump or nodes_full
    text: str
    count: int = 1
    first: float = 0.0        # wall time
    last: float = 0.0


@dataclass
class NodeState:
    """What /status shows for one node."""

    id: str
    role: str
    port: str | None = None
    records: int = 0
    acked: int = 0
    last_level: float | None = None
    alarm: str | None = None
    last_seen: float | None = None      # monotonic
    duplicates: int = 0
    gaps: int = 0
    hellos: int = 0
    fw: str | None = None
    board: str | None = None
    boot_count: int | None = None
    reset_cause: str | None = None


@dataclass
class Session:
    link: Link
    node: str
    role: str
    last_time_sent: float = 0.0         # monotonic
    resume: int | None = None           # ACK key 2 for every ACK until RECORDS come from it


class SessionManager:
    """Turns payloads from links into queue writes and answers; one instance per gateway."""

    def __init__(self, queue: Queue, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic,
                 time_resend_s: float = p.TIME_RESEND_S, max_nodes: int = MAX_NODES) -> None:
        self.queue = queue
        self.wall = wall
        self.mono = mono
        self.time_resend_s = time_resend_s
        self.sessions: dict[str, Session] = {}      # by link port
        self.nodes: dict[str, NodeState] = {}
        self.on_stored: Callable[[], None] | None = None   # wakes the batcher
        self.on_reply: Callable[[Link, p.Reply], None] | None = None   # the Commander
        # The status page's history (history.py): (node, role, records, wall time), called
        # after the ACK went out.
        self.on_records: Callable[[str, str, tuple[p.Record, ...], float], None] | None = None
        # Updates over the air (gateway/ota/manager.py): OTA_STATE from a node, and a session
        # (re)started by HELLO (called after its ACK went out).
        self.on_ota_state: Callable[[Session, p.OtaState], None] | None = None
        self.on_hello: Callable[[Session], None] | None = None
        self.on_node_error: Callable[[Session, p.Error], None] | None = None
        self._answering: dict[str, int] = {}    # port -> messages being handled (unanswered)
        self.node_errors = 0
        # "answering busy" while the queue refuses (disk full: every RECORDS, every second):
        # the first line, then a count at most once a minute, then one line when it stores.
        self._busy_full = Throttle(log, "queue full, answering busy", level=logging.WARNING)
        self._busy_error = Throttle(log, "queue unavailable, answering busy")
        self.recent_alarms: deque[dict[str, object]] = deque(maxlen=RECENT_ALARMS)
        self.silent_s = SILENT_S
        self._silent: set[str] = set()      # nodes reported silent (logged once)
        self.max_nodes = max_nodes
        # port -> the node it serves (pinned, or learned and kept in the queue file)
        self.port_nodes: dict[str, str] = queue.port_bindings()
        self._kept_ports = dict(self.port_nodes)   # what the queue file holds of port_nodes
        self._bound: dict[str, str] = {}        # node -> the port bound to it (BLE, pinned)
        self._jump_ok: set[tuple[str, str]] = set()   # (port, node) accepted by an operator
        self.identity_alarms: dict[tuple[str, str], IdentityAlarm] = {}
        self.refused = {"identity": 0, "jump": 0, "nodes_full": 0}
        self._alarms_full_logged = False
        for info in queue.nodes.values():
            self.nodes[info.node] = NodeState(info.node, info.role, records=info.stored,
                                              acked=info.ack, duplicates=info.duplicates,
                                              gaps=info.gaps)

    def _node_on(self, link: Link) -> str | None:
        """The node whose session is on `link` (for log fields), if any."""
        session = self.sessions.get(link.port)
        return session.node if session is not None else None

    # -- the per-link loop ------------------------------------------------------------------

    def register(self, link: Link) -> None:
        """Know `link`'s bound node before anything arrives (serve() calls it)."""
        bound = getattr(link, "bound_node", None)
        if bound is not None:
            self._bound[bound] = link.port
            self.port_nodes[link.port] = bound

    def forget(self, link: Link) -> None:
        """`link` was closed for good (a reload removed or changed it): end its session (its
        node, if it comes back on a link, says HELLO again, as after a restart) and drop its
        pin. What the node stored and its learned port stay."""
        self.sessions.pop(link.port, None)
        for node, port in list(self._bound.items()):
            if port == link.port:
                del self._bound[node]

    async def serve(self, link: Link) -> None:
        """Handle every payload of `link`, in order, until cancelled."""
        self.register(link)
        while True:
            payload = await link.incoming.get()
            try:
                await self.handle(link, payload)
            except Exception:  # noqa: BLE001 - one bad message must never stop a link
                log.exception(f"{link.port}: error while handling a message",
                              extra=logs.fields(link=link.port))

    def quiet(self, link: Link) -> bool:
        """Nothing from `link` waits to be answered (queued or being handled) and nothing
        waits to go out on it: OTA chunks go only then, never in front of an ACK."""
        return (link.incoming.empty() and not self._answering.get(link.port)
                and link.backlog() == 0)

    async def handle(self, link: Link, payload: bytes) -> None:
        self._answering[link.port] = self._answering.get(link.port, 0) + 1
        try:
            await self._handle(link, payload)
        finally:
            self._answering[link.port] -= 1

    async def _handle(self, link: Link, payload: bytes) -> None:
        session = self.sessions.get(link.port)
        if session is not None and p.is_records(payload):
            # Decoded, validated and stored on the queue's writer thread, handed over whole.
            await self._records(link, session, payload)
            return
        try:
            msg = p.decode_message(payload)
        except ProtocolError as exc:
            self._malformed(link, exc)
            return
        await self._dispatch(link, msg)

    def _malformed(self, link: Link, exc: ProtocolError) -> None:
        link.malformed += 1
        log.info(f"{link.port}: bad message ({exc}); answering ERROR {exc.code}",
                 extra=logs.fields(link=link.port, node=self._node_on(link), error=str(exc)))
        link.send(p.error_frame(exc.code, str(exc), exc.msg_type))

    async def _dispatch(self, link: Link, msg: p.Message) -> None:
        if isinstance(msg, p.Hello):
            await self._hello(link, msg)
        elif isinstance(msg, p.Records):
            # Without a session (RECORDS on a session go to the queue as they came).
            link.send(p.error_frame(p.ERR_NO_SESSION, "no session: send HELLO first",
                                    p.RECORDS))
        elif isinstance(msg, p.Reply):
            log.info(f"{link.port}: REPLY {msg.request_id} ok={msg.ok}",
                     extra=logs.fields(link=link.port, node=self._node_on(link),
                                       request_id=msg.request_id))
            session = self.sessions.get(link.port)
            if session is not None:
                self.nodes[session.node].last_seen = self.mono()
            if self.on_reply is not None:
                self.on_reply(link, msg)
        elif isinstance(msg, p.OtaState):
            session = self.sessions.get(link.port)
            if session is None:
                link.send(p.error_frame(p.ERR_NO_SESSION, "no session: send HELLO first",
                                        p.OTA_STATE))
                return
            self.nodes[session.node].last_seen = self.mono()
            if self.on_ota_state is not None:
                self.on_ota_state(session, msg)
        elif isinstance(msg, p.Error):
            self.node_errors += 1
            log.info(f"{link.port}: node sent ERROR {msg.code}: {msg.message}",
                     extra=logs.fields(link=link.port, node=self._node_on(link),
                                       error=f"{msg.code}: {msg.message}"))
            session = self.sessions.get(link.port)
            if session is not None and self.on_node_error is not None:
                self.on_node_error(session, msg)
        else:
            # A gateway-to-node message coming from a node: valid CBOR, wrong direction.
            link.malformed += 1
            link.send(p.error_frame(p.ERR_MALFORMED,
                                    f"{p.TYPE_NAMES[msg.TYPE]} is sent by the gateway only",
                                    msg.TYPE))

    # -- messages --------------------------------------------------------------------------

    async def _hello(self, link: Link, msg: p.Hello) -> None:
        if ids.refused_hello(link, msg.node):   # ids become file names and labels
            return
        refused = self._refuse_hello(link, msg)
        if refused is not None:
            self._identity_alarm(link, msg.node, *refused)
            # The port's session ends: RECORDS that follow are not stored as anybody's.
            self.sessions.pop(link.port, None)
            # ERROR 6 (busy): the node keeps its journal and says HELLO again later.
            link.send(p.error_frame(p.ERR_BUSY, refused[1], p.HELLO))
            return
        learned = self._kept_ports.get(link.port) != msg.node
        self.port_nodes[link.port] = msg.node
        self._jump_ok.discard((link.port, msg.node))     # an acceptance is used once
        old = self.sessions.get(link.port)
        if old is not None and old.node != msg.node:
            log.info(f"{link.port}: node {old.node} replaced by {msg.node}",
                     extra=logs.fields(link=link.port, node=msg.node, previous=old.node))
        session = Session(link, msg.node, msg.role)
        self.sessions[link.port] = session
        # Another link may have carried this node before (moved cable): it is here now.
        for port, s in list(self.sessions.items()):
            if s.node == msg.node and port != link.port:
                del self.sessions[port]
        state = self._state(msg.node, msg.role)
        state.port, state.role, state.hellos = link.port, msg.role, state.hellos + 1
        state.fw, state.boot_count, state.reset_cause = msg.fw, msg.boot_count, msg.reset_cause
        state.board = msg.board
        state.last_seen = self.mono()
        self.send_time(session)
        try:
            result, high = await self.queue.aio.hello(msg.node, msg.role, msg.first_unacked,
                                                      self.wall(),
                                                      link.port if learned else None)
        except QueueError as exc:
            self._busy_error.error(f"{link.port}: cannot record HELLO of {msg.node}: {exc}",
                                   extra=logs.fields(link=link.port, node=msg.node, error=str(exc)))
            link.send(p.error_frame(p.ERR_BUSY, "gateway queue unavailable", p.HELLO))
            return
        if learned:
            self._kept_ports[link.port] = msg.node
        if result.gaps:
            log.warning(f"{msg.node}: {result.gaps} records below seq {msg.first_unacked}"
                        f" never arrived and are gone (node journal refused them)",
                        extra=logs.fields(link=link.port, node=msg.node, gaps=result.gaps,
                                          seq_to=msg.first_unacked - 1))
        self._update(state, result.ack)
        resume = session.resume = self._resume(msg, high)
        log.info(f"{link.port}: HELLO {msg.node} role={msg.role} fw={msg.fw}"
                 f" next_seq={msg.next_seq} first_unacked={msg.first_unacked};"
                 f" ACK {result.ack}" + (f" resume {resume}" if resume else ""),
                 extra=logs.fields(link=link.port, node=msg.node, ack=result.ack,
                                   resume=resume))
        link.send(p.encode_frame(p.Ack(result.ack, resume)))
        if self.on_hello is not None:
            self.on_hello(session)

    @staticmethod
    def _resume(msg: p.Hello, high: int) -> int | None:
        """ACK key 2 (PROTOCOL.md 2.2): where a node must continue so that no seq it gives is
        one already stored here. A node that lost its counter says from where it is unsure
        (HELLO key 12); a node whose next seq is not above what is stored has lost it without
        knowing. A node replaying after a power cut has next_seq above `high`: not moved."""
        if msg.unsure is not None:
            resume = high + 1 if high >= msg.unsure else None
        else:
            resume = high + 1 if msg.next_seq <= high else None
        if resume is not None:
            log.warning(f"{msg.node}: its counter is behind what is stored (next_seq"
                        f" {msg.next_seq}, unsure from {msg.unsure}, stored up to {high}):"
                        f" told to continue at {resume}; its held records get new seqs",
                        extra=logs.fields(node=msg.node, resume=resume))
        return resume

    async def _records(self, link: Link, session: Session, payload: bytes) -> None:
        """A RECORDS payload on `link`'s session: the queue decodes, checks and stores it on
        its writer thread (Queue.aio.store_message); answered here, ACK only after COMMIT."""
        try:
            # Group commit: RECORDS of other links arriving meanwhile share the fsync.
            out = await self.queue.aio.store_message(session.node, session.role, payload,
                                                     session.resume, self.wall())
        except ProtocolError as exc:
            self._malformed(link, exc)
            return
        except QueueFullError as exc:
            self._busy_full.error(f"{session.node}: {exc}; answering busy",
                                  extra=logs.fields(link=link.port, node=session.node,
                                                    error=str(exc), **_seq_range(exc.records)))
            link.send(p.error_frame(p.ERR_BUSY, "gateway queue full", p.RECORDS))
            return
        except QueueError as exc:
            self._busy_error.error(f"{session.node}: {exc}; answering busy",
                                   extra=logs.fields(link=link.port, node=session.node,
                                                     error=str(exc), **_seq_range(exc.records)))
            link.send(p.error_frame(p.ERR_BUSY, "gateway queue unavailable", p.RECORDS))
            return
        msg = out.message
        if not isinstance(msg, p.Records):
            await self._dispatch(link, msg)     # it only looked like RECORDS
            return
        state = self._state(session.node, session.role)
        state.last_seen = self.mono()
        if out.refused == REFUSED_RESUME:
            # Numbered by a lost counter (PROTOCOL.md 2.2 rule 7): stored, these seqs would
            # stand for other records. Not stored; the node renumbers them on this ACK.
            log.info(f"{session.node}: RECORDS from {msg.from_seq} not stored (seqs of a"
                     f" lost counter); told again to resume at {session.resume}",
                     extra=logs.fields(link=link.port, node=session.node, **_seq_range(msg)))
            link.send(p.encode_frame(p.Ack(out.ack, session.resume)))
            return
        session.resume = None                   # the node has moved above what is stored
        if out.refused == REFUSED_JUMP:
            self._identity_alarm(link, session.node, "jump",
                                 f"RECORDS of {session.node} refused: from {msg.from_seq} is"
                                 f" more than {p.MAX_SEQ_JUMP} beyond the ACK"
                                 f" {out.ack} the gateway holds")
            link.send(p.error_frame(p.ERR_BUSY, "from jumps beyond what a journal holds",
                                    p.RECORDS))
            return
        result = out.result
        assert result is not None
        if self._busy_full.failing or self._busy_error.failing:
            log.warning("queue takes records again: no longer answering busy")
            self._busy_full.reset()
            self._busy_error.reset()
        # The newest level and alarm state for /status (from the end: usually one step).
        kinds = {r.kind for r in msg.records}
        for kind, typ in ((p.KIND_LEVEL, int | float), (p.KIND_ALARM, str)):
            if kind in kinds:
                for r in reversed(msg.records):
                    if r.kind == kind and isinstance(r.body.get(1), typ):
                        if kind == p.KIND_LEVEL:
                            state.last_level = r.body[1]
                        else:
                            state.alarm = r.body[1]
                        break
        if result.stored and p.KIND_ALARM in kinds:
            self._remember_alarms(session, msg.records)
        if result.gaps:
            log.warning(f"{session.node}: {result.gaps} records below seq {msg.from_seq}"
                        f" are gone for good (from rule)",
                        extra=logs.fields(link=link.port, node=session.node, gaps=result.gaps,
                                          seq_to=msg.from_seq - 1))
        self._update(state, result.ack)
        # Committed above: only now may the node forget these records.
        link.send(p.encode_frame(p.Ack(result.ack)))
        if result.stored and self.on_stored is not None:
            self.on_stored()
        if self.on_records is not None:
            try:
                self.on_records(session.node, session.role, msg.records, self.wall())
            except Exception:  # noqa: BLE001 - a chart must never cost a link its records
                log.exception(f"{session.node}: cannot add records to the status history")

    # -- identity: which node a link may speak for ------------------------------------------

    def _refuse_hello(self, link: Link, msg: p.Hello) -> tuple[str, str] | None:
        """(reason, text) when this HELLO must be refused, else None. A link bound to a node
        (BLE: authenticated; serial: pinned) carries that node only; a port that served a node
        carries no other id until an operator accepts it; a node live on another link is not
        taken over; a `first_unacked` / `next_seq` further than a journal can hold beyond
        what the queue stored of the node is refused; new ids beyond `max_nodes` are refused."""
        node, port = msg.node, link.port
        shown = repr(node[:40]) if len(node) > 40 or not node.isprintable() else node
        bound = getattr(link, "bound_node", None)     # links of tests may lack it
        served = bound or self.port_nodes.get(port)
        if served is not None and served != node:
            how = "is bound to" if bound else "served"
            hint = ("" if bound else
                    f"; if the device was replaced, run `roadside gateway accept --config"
                    f" gateway.toml {port} {shown}`")
            return "identity", f"HELLO as {shown} refused: {port} {how} {served}{hint}"
        bound_port = self._bound.get(node)
        if bound_port is not None and bound_port != port:
            return "identity", (f"HELLO as {shown} refused on {port}: {shown} is bound to"
                                f" {bound_port}")
        other = self.nodes.get(node)
        if (other is not None and other.port not in (None, port)
                and self.link_state(other) == "up"):
            return "identity", (f"HELLO as {shown} refused on {port}: {shown} is live on"
                                f" {other.port}")
        info = self.queue.nodes.get(node)
        if info is not None and (port, node) not in self._jump_ok:
            limit = info.ack + p.MAX_SEQ_JUMP
            if msg.first_unacked - 1 > limit or msg.next_seq - 1 > limit:
                return "jump", (f"HELLO as {shown} refused: first_unacked {msg.first_unacked}"
                                f" / next_seq {msg.next_seq} are more than {p.MAX_SEQ_JUMP}"
                                f" beyond the ACK {info.ack} the gateway holds")
        if node not in self.nodes and len(self.nodes) >= self.max_nodes:
            return "nodes_full", (f"HELLO as {shown} refused: the gateway keeps at most"
                                  f" {self.max_nodes} node ids")
        return None

    def _identity_alarm(self, link: Link, node: str, reason: str, text: str) -> None:
        """Count a refused HELLO; log it once per (port, id) and keep it for /status."""
        self.refused[reason] += 1
        now = self.wall()
        key = (link.port, node[:64])
        alarm = self.identity_alarms.get(key)
        if alarm is not None:
            alarm.count += 1
            alarm.last = now
            return
        if len(self.identity_alarms) >= IDENTITY_ALARMS:
            # A device trying id after id: the table (and the log) stay bounded.
            if not self._alarms_full_logged:
                self._alarms_full_logged = True
                log.warning(f"{IDENTITY_ALARMS} identity alarms are waiting; further refused"
                            f" HELLOs are counted only (/metrics"
                            f" roadside_gateway_hello_refused_total)")
            return
        log.warning(text, extra=logs.fields(port=link.port, link=link.port, node=node[:64],
                                            reason=reason))
        self.identity_alarms[key] = IdentityAlarm(link.port, node[:64], reason, text,
                                                  1, now, now)

    def accept(self, port: str, node: str) -> str:
        """An operator accepts `node` on `port` (a replaced device, a node whose seq jumped):
        its next HELLO there is taken. Returns what was done; ValueError if not allowed."""
        bound = self._bound.get(node)
        if bound is not None and bound != port:
            raise ValueError(f"{node} is bound to {bound} in gateway.toml; change the"
                             f" [[link]] there")
        pinned = self.port_nodes.get(port) if port in self._bound.values() else None
        if pinned is not None and pinned != node:
            raise ValueError(f"{port} is bound to {pinned} in gateway.toml; change its"
                             f" [[link]] node there")
        previous = self.port_nodes.get(port)
        self.port_nodes[port] = node
        self._jump_ok.add((port, node))
        self.identity_alarms.pop((port, node), None)
        self._alarms_full_logged = False
        log.warning(f"operator accepted {node} on {port} (it served {previous})",
                    extra=logs.fields(port=port, link=port, node=node))
        return f"{node} accepted on {port} (it served {previous or 'no node yet'})"

    # -- time -------------------------------------------------------------------------------

    def send_time(self, session: Session) -> None:
        session.link.send(p.encode_frame(p.Time(int(self.wall() * 1000))))
        session.last_time_sent = self.mono()

    async def resend_time(self, every_s: float = 5.0) -> None:
        """Re-send TIME to each session every `time_resend_s` (runs until cancelled)."""
        while True:
            await asyncio.sleep(every_s)
            now = self.mono()
            for s in list(self.sessions.values()):
                if s.link.is_open and now - s.last_time_sent >= self.time_resend_s:
                    self.send_time(s)
            self.check_silent()

    def check_silent(self) -> list[str]:
        """Log once when a node goes silent (link open, nothing heard for `silent_s`) and once
        when it is heard again; returns the nodes silent now."""
        now_silent = []
        for state in self.nodes.values():
            if self.link_state(state) == "silent":
                now_silent.append(state.id)
                if state.id not in self._silent:
                    self._silent.add(state.id)
                    quiet = self.mono() - (state.last_seen or 0.0)
                    log.warning(f"node {state.id} on {state.port} is silent: nothing heard for"
                                f" {quiet:.0f} s (link open); check its power and sensor",
                                extra=logs.fields(node=state.id, port=state.port,
                                                  link=state.port))
            elif state.id in self._silent and self.link_state(state) == "up":
                self._silent.discard(state.id)
                log.info(f"node {state.id} is heard again",
                         extra=logs.fields(node=state.id, port=state.port, link=state.port))
        return now_silent

    # -- state ------------------------------------------------------------------------------

    def _state(self, node: str, role: str) -> NodeState:
        state = self.nodes.get(node)
        if state is None:
            state = self.nodes[node] = NodeState(node, role)
        return state

    def _remember_alarms(self, session: Session, records: tuple[p.Record, ...]) -> None:
        """Keep the last RECENT_ALARMS alarm records (a resent one is not kept twice)."""
        known = {(a["node"], a["seq"]) for a in self.recent_alarms}
        now = self.wall()
        for r in records:
            if r.kind != p.KIND_ALARM or (session.node, r.seq) in known:
                continue
            data = p.body_to_data(r.kind, r.body)
            self.recent_alarms.append({
                "node": session.node, "role": session.role, "seq": r.seq,
                "t": r.t if r.synced else int(now), "synced": r.synced, "received": now,
                "state": data.get("state"), "level_cm": data.get("level_cm"),
                "previous": data.get("previous")})

    def _update(self, state: NodeState, ack: int) -> None:
        info = self.queue.nodes.get(state.id)
        state.acked = ack
        if info is not None:
            state.records, state.duplicates, state.gaps = info.stored, info.duplicates, info.gaps

    def link_state(self, state: NodeState) -> str:
        """up: session on an open link, heard recently; silent: open but quiet; else down."""
        session = self.sessions.get(state.port) if state.port else None
        if session is None or session.node != state.id or not session.link.is_open:
            return "down"
        if state.last_seen is None or self.mono() - state.last_seen > self.silent_s:
            return "silent"
        return "up"

    def forget_link(self, link: Link) -> None:
        """The link closed for good: its session ends."""
        self.sessions.pop(link.port, None)


def _seq_range(msg: p.Records | None) -> dict[str, int]:
    """Log fields for the seqs a RECORDS message carries (`seq_from`, `seq_to`)."""
    if msg is None:
        return {}
    if not msg.records:
        return {"seq_from": msg.from_seq}
    seqs = [r.seq for r in msg.records]
    return {"seq_from": min(seqs), "seq_to": max(seqs)}
