"""Operator commands to a node (PROTOCOL.md 2.2): COMMAND out, REPLY back, retried, audited.

    roadside gateway cmd --config gateway.toml wl-0003 config.set key=alarm_cm value=120
      -> POST /nodes/wl-0003/commands on the status server (loopback only)
      -> COMMAND {1: request id, 2: name, 3: args} on the node's link
      -> REPLY {1: request id, 2: ok, 3: result | 4: error}

A command is sent again with the same request id when no REPLY arrives within
`attempt_timeout_s` (the node answers a repeated id from its reply cache without running the
command twice). Request ids grow across restarts: the next id is one above the highest in the
audit log, so a node's cache never answers a new command with an old reply.

The audit log is a SQLite table in data_dir/commands.sqlite: one row per command, written
before the COMMAND leaves (who, when, node, name, args) and completed with the outcome (ok,
error, timeout, no_session), the reply, the number of attempts and the duration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import protocol as p
from .errors import GatewayError
from .links.base import Link

log = logging.getLogger("roadside.gateway.commands")

# v1 node commands and their args: name -> (required args, optional args).
COMMANDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ping": ((), ()),
    "info": ((), ()),
    "config.get": ((), ("key",)),
    "config.set": (("key", "value"), ()),
    "reboot": ((), ()),
    # role commands (PROTOCOL.md 2.2): signal monitor, toll beacon
    "plan.select": (("plan",), ()),
    "fault.clear": ((), ()),
    "signal.status": ((), ()),
    "toll.status": ((), ()),
    # updates over the air (PROTOCOL.md 2.6; gateway/ota/ sends them during a rollout)
    "ota.state": ((), ()),
    "ota.switch": (("tag",), ()),
}
ATTEMPT_TIMEOUT_S = 2.0      # like the node's ACK timeout
ATTEMPTS = 3

AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    request_id INTEGER PRIMARY KEY,
    sent REAL NOT NULL,           -- epoch s when the command was accepted
    who TEXT NOT NULL,            -- the operator, as the client says (loopback only)
    origin TEXT NOT NULL,         -- the client's address (local API), or "mqtt"
    node TEXT NOT NULL,
    name TEXT NOT NULL,
    args TEXT,                    -- JSON
    outcome TEXT,                 -- ok, error (the node refused), timeout, no_session;
                                  -- NULL: the gateway stopped before it ended
    result TEXT,                  -- JSON of the reply's result (ok) or its error text
    attempts INTEGER,
    done REAL                     -- epoch s when it ended
);
"""


class CommandError(GatewayError):
    """A command that cannot be run; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int, request_id: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.request_id = request_id     # set when the command was sent (504: no reply)


@dataclass
class CommandResult:
    request_id: int
    node: str
    name: str
    outcome: str                  # ok, error, timeout
    ok: bool
    result: Any = None
    error: str | None = None
    attempts: int = 0
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "node": self.node, "name": self.name,
                "outcome": self.outcome, "ok": self.ok, "result": self.result,
                "error": self.error, "attempts": self.attempts,
                "duration_s": round(self.duration_s, 3)}


def validate(name: Any, args: Any) -> dict[str, Any] | None:
    """Check a command name and args against the v1 commands; CommandError(400) names what
    is wrong and what is allowed."""
    if name not in COMMANDS:
        raise CommandError(f"name: unknown command {name!r}; allowed: {', '.join(COMMANDS)}",
                           400)
    if args is None:
        args = {}
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise CommandError(f"args: must be a map with text keys, got {args!r}", 400)
    required, optional = COMMANDS[name]
    for key in args:
        if key not in required + optional:
            allowed = ", ".join(required + optional) or "none"
            raise CommandError(f"args.{key}: not an argument of {name}; allowed: {allowed}",
                               400)
    for key in required:
        if key not in args:
            raise CommandError(f"args.{key}: missing; {name} needs {', '.join(required)}", 400)
    if "key" in args and not isinstance(args["key"], str):
        raise CommandError(f"args.key: must be text, got {args['key']!r}", 400)
    return args or None


def _cbor_safe(value: Any) -> Any:
    """A REPLY result as JSON: CBOR maps may have non-text keys, bytes become hex."""
    if isinstance(value, dict):
        return {str(k): _cbor_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cbor_safe(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class AuditLog:
    """The commands table in its own SQLite file (kept apart from the queue's writer)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(AUDIT_SCHEMA)

    def last_id(self) -> int:
        with self._lock:
            return self._db.execute("SELECT coalesce(max(request_id), 0) FROM commands"
                                    ).fetchone()[0]

    def start(self, request_id: int, who: str, origin: str, node: str, name: str,
              args: dict[str, Any] | None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO commands (request_id, sent, who, origin, node, name, args)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (request_id, time.time(), who, origin, node, name,
                 None if args is None else json.dumps(_cbor_safe(args))))

    def finish(self, request_id: int, outcome: str, result: Any, attempts: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE commands SET outcome = ?, result = ?, attempts = ?, done = ?"
                " WHERE request_id = ?",
                (outcome, json.dumps(result), attempts, time.time(), request_id))

    def add(self, request_id: int, who: str, origin: str, node: str, name: str,
            args: dict[str, Any] | None, outcome: str, result: Any) -> None:
        """A row for something already ended, in one statement (never seen half written)."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO commands (request_id, sent, who, origin, node, name, args, outcome,"
                " result, attempts, done) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
                (request_id, now, who, origin, node, name,
                 None if args is None else json.dumps(_cbor_safe(args)), outcome,
                 json.dumps(result), now))

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(
                "SELECT request_id, sent, who, origin, node, name, args, outcome, result,"
                " attempts, done FROM commands ORDER BY request_id DESC LIMIT ?", (limit,))
            cols = [c[0] for c in cur.description]
            rows = [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
        for r in rows:
            for key in ("args", "result"):
                r[key] = None if r[key] is None else json.loads(r[key])
        return rows

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Commander:
    """Sends commands on the links the sessions know, and matches REPLYs to them by id."""

    def __init__(self, sessions: Any, audit_path: Path,
                 attempt_timeout_s: float = ATTEMPT_TIMEOUT_S, attempts: int = ATTEMPTS,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.sessions = sessions
        self.audit = AuditLog(audit_path)
        self.attempt_timeout_s = attempt_timeout_s
        self.attempts = attempts
        self.mono = mono
        self._next_id = self.audit.last_id() + 1
        self._pending: dict[int, tuple[str, asyncio.Future[p.Reply]]] = {}
        self.foreign_replies = 0    # REPLYs from a link or node the command did not go to
        # (node, name, args, result) of every ok REPLY: the status page learns a node's
        # thresholds from config.get / config.set (history.py)
        self.on_result: Callable[[str, str, dict[str, Any] | None, Any], None] | None = None
        sessions.on_reply = self.on_reply

    def close(self) -> None:
        self.audit.close()

    def on_reply(self, link: Link, reply: p.Reply) -> None:
        """A REPLY arrived (from the session manager): wake the command waiting for it."""
        entry = self._pending.get(reply.request_id)
        if entry is None:
            log.info(f"{link.port}: REPLY {reply.request_id} matches no command waiting"
                     f" (late, or answered already)")
            return
        # Only the node the command went to, on the link of its session, may answer it.
        session = self.sessions.sessions.get(link.port)
        if session is None or session.node != entry[0] or session.link is not link:
            self.foreign_replies += 1
            log.warning(f"{link.port}: REPLY {reply.request_id} refused: it is for"
                        f" {entry[0]}, and this link carries"
                        f" {session.node if session else 'no session'}")
            return
        if not entry[1].done():
            entry[1].set_result(reply)

    def _link_of(self, node: str) -> Link | None:
        for session in self.sessions.sessions.values():
            if session.node == node:
                return session.link
        return None

    async def note(self, node: str, name: str, args: dict[str, Any], who: str, origin: str,
                   outcome: str, result: Any) -> int:
        """Write an audit row for something done to a node that is not one COMMAND (an OTA
        rollout's outcome on a node); returns its request id."""
        rid = self._next_id
        self._next_id += 1
        await asyncio.to_thread(self.audit.add, rid, who, origin, node, name, args, outcome,
                                result)
        return rid

    async def run(self, node: str, name: Any, args: Any = None, who: str = "unknown",
                  origin: str = "local", attempt_timeout_s: float | None = None,
                  attempts: int | None = None) -> CommandResult:
        """Send the command, retrying with the same id; CommandResult when the node answered
        (ok or not), CommandError(404/409/504) when it cannot or did not."""
        args = validate(name, args)
        timeout = attempt_timeout_s or self.attempt_timeout_s
        tries = attempts or self.attempts
        if node not in self.sessions.nodes:
            known = ", ".join(sorted(self.sessions.nodes)) or "none yet"
            raise CommandError(f"node {node!r} is unknown to this gateway; known: {known}",
                               404)
        if self._link_of(node) is None:
            raise CommandError(f"node {node!r} has no session (its link is down or it has not"
                               f" said HELLO since the gateway started)", 409)
        rid = self._next_id
        self._next_id += 1
        await asyncio.to_thread(self.audit.start, rid, who, origin, node, name, args)
        frame = p.encode_frame(p.Command(rid, name, args))
        future: asyncio.Future[p.Reply] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (node, future)
        t0 = self.mono()
        attempt = 0
        outcome, result = "timeout", None
        log.info(f"command {rid} {name} to {node} by {who}",
                 extra={"fields": {"request_id": rid, "node": node, "command": name,
                                   "who": who}})
        try:
            for attempt in range(1, tries + 1):
                link = self._link_of(node)   # the node may have moved or come back
                if link is not None:
                    link.send(frame)
                try:
                    async with asyncio.timeout(timeout):   # not wait_for: see Batcher.run
                        reply = await asyncio.shield(future)
                except TimeoutError:
                    if attempt < tries:
                        log.info(f"command {rid} to {node}: no REPLY in {timeout:g} s;"
                                 f" sending again (attempt {attempt + 1} of {tries})")
                    continue
                outcome = "ok" if reply.ok else "error"
                result = _cbor_safe(reply.result) if reply.ok else reply.error
                if reply.ok and self.on_result is not None:
                    try:
                        self.on_result(node, name, args, result)
                    except Exception:  # noqa: BLE001 - the command's answer comes first
                        log.exception(f"command {rid}: cannot note its result for /history")
                return CommandResult(rid, node, name, outcome, reply.ok,
                                     _cbor_safe(reply.result) if reply.ok else None,
                                     None if reply.ok else (reply.error or "failed"),
                                     attempt, self.mono() - t0)
            log.warning(f"command {rid} {name} to {node}: no REPLY after {tries} attempts")
            raise CommandError(f"node {node!r} did not answer {name} (request {rid}) after"
                               f" {tries} attempts of {timeout:g} s", 504, rid)
        finally:
            self._pending.pop(rid, None)
            future.cancel()
            await asyncio.to_thread(self.audit.finish, rid, outcome, result, attempt)
