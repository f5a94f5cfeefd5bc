"""The local HTTP server on the [status] listen address (aiohttp).

GET / (the status page), GET /status (JSON), GET /history (the page's charts, history.py),
GET /metrics (Prometheus text), GET /healthz
(200 `ok`, or 503 with one JSON line saying why); from loopback only: POST
/nodes/{node}/commands (a command to a node, answered with its REPLY), GET /commands (the
audit log), POST /ota/rollouts (an update bundle in the body, application/octet-stream: starts
a rollout, gateway/ota/), GET /ota/rollouts/{id} and POST /ota/rollouts/{id}/cancel.

Any web page the operator opens can make the browser send requests to loopback, and a DNS
name of the attacker's can be rebound to 127.0.0.1. So the command endpoints also require: a
Host that names this server (a loopback address or `localhost`, with its port), an Origin,
when there is one, equal to that host, a JSON content type on writes (a page cannot send one
cross-site without a CORS preflight, which this server never grants), and the token from
data_dir/api.token (gateway/api_token.py) as `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import secrets
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from aiohttp import web
from yarl import URL

from . import ids
from .commands import Commander, CommandError
from .health import SAMPLE_S, Health
from .history import History
from .links.base import Link
from .metrics import CONTENT_TYPE, Metrics, backpressure
from .ota.bundle import MAX_BUNDLE
from .ota.manager import OtaError, OtaManager
from .queue import Queue
from .session import SessionManager
from .uplinks.base import Uplink

# The status page for installers and operators: one self-contained file (no external assets:
# a roadside cabinet may have no internet), polling /status every second.
STATUS_PAGE = (resources.files(__package__) / "status_page.html").read_text(encoding="utf-8")


class Status:
    """Builds the /status document from the live objects (no I/O but one cheap SQL count)."""

    def __init__(self, gateway_id: str, site: str, queue: Queue, sessions: SessionManager,
                 links: list[Link], uplinks: list[Uplink], health: Health | None = None,
                 commander: Commander | None = None, api_token: str | None = None,
                 ota: OtaManager | None = None) -> None:
        self.gateway_id = gateway_id
        self.site = site
        self.queue = queue
        self.sessions = sessions
        self.links = links
        self.uplinks = uplinks
        self.started = time.monotonic()
        self.health = health or Health(links, list(uplinks), queue)
        self.metrics = Metrics(self)
        self.commander = commander
        self.ota = ota
        # Without a token from the daemon nobody can use the command API (not: everybody).
        self.api_token = api_token or secrets.token_hex(32)
        for u in uplinks:
            self.metrics.instrument(u)
        # The charts of the status page: filled as records are stored, thresholds learned
        # from the config replies the gateway relays.
        self.history = History()
        sessions.on_records = self.history.add
        if commander is not None:
            commander.on_result = self._learn_config

    def _learn_config(self, node: str, name: str, args: dict[str, Any] | None,
                      result: Any) -> None:
        state = self.sessions.nodes.get(node)
        if state is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            self.history.learn_config(node, state.role, name, args, result, when)

    def document(self) -> dict[str, Any]:
        now = time.monotonic()
        nodes = []
        for n in sorted(self.sessions.nodes.values(), key=lambda n: n.id):
            nodes.append({
                "id": n.id, "role": n.role, "link": self.sessions.link_state(n),
                "port": n.port, "records": n.records, "acked": n.acked,
                "last_level": n.last_level, "alarm": n.alarm,
                "last_seen_s": None if n.last_seen is None else round(now - n.last_seen, 1),
                "duplicates": n.duplicates, "gaps": n.gaps, "fw": n.fw,
                "boot_count": n.boot_count, "reset_cause": n.reset_cause, "board": n.board,
            })
        q = self.queue
        return {
            "gateway": self.gateway_id,
            "site": self.site,
            "uptime_s": round(now - self.started, 1),
            "nodes": nodes,
            "queue": {"depth": q.depth(), "batches_pending": q.batches_pending(),
                      "duplicates": q.counters["duplicates"], "gaps": q.counters["gaps"],
                      "delivered": q.counters["delivered_records"],
                      "dead_letters": q.counters["dead_letters"],
                      "bytes": q.bytes(), "max_bytes": q.max_bytes,
                      "evicted": q.counters["evicted"], "backpressure": backpressure(q),
                      "storage": storage_doc(q)},
            "links": [{"port": link.port, "type": link.type, "state": link.state,
                       "device": getattr(link, "device", link.port),
                       "last_error": link.last_error, "byte_rate": link.byte_rate,
                       **link.counters()}
                      for link in self.links],
            "uplinks": [u.status() for u in self.uplinks],
            "recent_alarms": list(reversed(self.sessions.recent_alarms)),   # newest first
            "identity": self.identity(),
            "ota": self.ota.document() if self.ota is not None else None,
        }

    def identity(self) -> dict[str, Any]:
        """Refused HELLOs (session.py): counts by reason, and the alarms an operator may
        accept (`roadside gateway accept`), oldest first."""
        s = self.sessions
        return {"refused": dict(s.refused), "max_nodes": s.max_nodes,
                "foreign_replies": getattr(self.commander, "foreign_replies", 0),
                "alarms": [{"port": a.port, "node": a.node, "reason": a.reason,
                            "text": a.text, "count": a.count, "first": a.first,
                            "last": a.last} for a in s.identity_alarms.values()]}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BUNDLE + 4096)   # POST /ota/rollouts
        app.router.add_get("/", self._page)
        app.router.add_get("/status", self._status)
        app.router.add_get("/history", self._history)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/nodes/{node}/commands", self._command)
        app.router.add_get("/commands", self._commands)
        app.router.add_post("/links/accept", self._accept)
        app.router.add_post("/ota/rollouts", self._ota_start)
        app.router.add_get("/ota/rollouts/{id}", self._ota_rollout)
        app.router.add_post("/ota/rollouts/{id}/cancel", self._ota_cancel)
        app.cleanup_ctx.append(self._sampler)
        return app

    async def _sampler(self, _app: web.Application) -> AsyncIterator[None]:
        """Look at health every second, so "down for N s" counts from when it began."""
        async def sample() -> None:
            while True:
                self.health.problems()
                await asyncio.sleep(SAMPLE_S)

        task = asyncio.create_task(sample(), name="health sampler")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _page(self, _request: web.Request) -> web.Response:
        return web.Response(text=STATUS_PAGE, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def _status(self, _request: web.Request) -> web.Response:
        return web.json_response(self.document())

    async def _history(self, _request: web.Request) -> web.Response:
        return web.json_response(self.history.document(),
                                 headers={"Cache-Control": "no-store"})

    async def _healthz(self, _request: web.Request) -> web.Response:
        ok, doc = self.health.check()
        if ok:
            return web.Response(text="ok")
        return web.Response(status=503, text=json.dumps(doc) + "\n",
                            content_type="application/json")

    @staticmethod
    def _local(request: web.Request) -> bool:
        try:
            return ipaddress.ip_address(request.remote or "").is_loopback
        except ValueError:
            return False

    def _refuse(self, request: web.Request, write: bool = False,
                content_type: str = "application/json") -> web.Response | None:
        if self.commander is None:
            return _error(503, "commands are not available on this server")
        if not self._local(request):
            return _error(403, f"commands are accepted from loopback only, not from"
                               f" {request.remote}; run `roadside gateway cmd` on the gateway")
        here = _this_server(request)
        if here is None:
            return _error(403, f"Host {request.headers.get('Host', '')[:80]!r} does not name"
                               f" this server; use http://127.0.0.1:PORT (`roadside gateway"
                               f" cmd` does)")
        origin = request.headers.get("Origin")
        if origin is not None and _origin(origin) != here:
            return _error(403, f"Origin {origin[:80]!r} is not this server: commands are not"
                               f" accepted from web pages; use `roadside gateway cmd`")
        if write and request.content_type != content_type:
            return _error(415, f"Content-Type must be {content_type}, got"
                               f" {request.content_type[:80]!r}")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self.api_token.encode()):
            return _error(401, "missing or wrong token: send `Authorization: Bearer TOKEN`"
                               " with the token in the gateway's data_dir/api.token"
                               " (`roadside gateway cmd` reads it)")
        return None

    async def _command(self, request: web.Request) -> web.Response:
        """POST /nodes/{node}/commands {"name", "args", "who", "timeout_s", "attempts"}."""
        refused = self._refuse(request, write=True)
        if refused is not None:
            return refused
        assert self.commander is not None
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body: must be a JSON object {\"name\": ..., \"args\": {...}}")
        if not isinstance(body, dict):
            return _error(400, f"body: must be a JSON object, got {body!r}")
        timeout = body.get("timeout_s")
        attempts = body.get("attempts")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(
                timeout, int | float) or not 0.05 <= timeout <= 120):
            return _error(400, f"timeout_s: must be a number 0.05..120, got {timeout!r}")
        if attempts is not None and (isinstance(attempts, bool) or not isinstance(
                attempts, int) or not 1 <= attempts <= 10):
            return _error(400, f"attempts: must be an integer 1..10, got {attempts!r}")
        who = body.get("who")
        if not ids.valid(request.match_info["node"]):
            return _error(400, str(ids.BadNodeId(
                f"node: bad node id {ids.shown(request.match_info['node'])}; use {ids.RULE}")))
        try:
            result = await self.commander.run(
                request.match_info["node"], body.get("name"), body.get("args"),
                who=str(who)[:100] if who else "unknown", origin=str(request.remote),
                attempt_timeout_s=timeout, attempts=attempts)
        except CommandError as exc:
            return _error(exc.status, str(exc))
        return web.json_response(result.to_json())

    async def _commands(self, request: web.Request) -> web.Response:
        """GET /commands?limit=N: the audit log, newest first."""
        refused = self._refuse(request)
        if refused is not None:
            return refused
        assert self.commander is not None
        try:
            limit = max(1, min(1000, int(request.query.get("limit", "50"))))
        except ValueError:
            return _error(400, "limit: must be an integer 1..1000")
        rows = await asyncio.to_thread(self.commander.audit.recent, limit)
        return web.json_response(rows)

    async def _accept(self, request: web.Request) -> web.Response:
        """POST /links/accept {"port", "node"}: an operator accepts a node id on a port that
        refused it (identity alarm); guarded like commands (loopback, Host, Origin, JSON,
        the data_dir/api.token Bearer token)."""
        refused = self._refuse(request, write=True)
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not all(
                isinstance(body.get(k), str) and body.get(k) for k in ("port", "node")):
            return _error(400, "body: must be a JSON object {\"port\": ..., \"node\": ...}")
        try:
            text = self.sessions.accept(body["port"], body["node"])
        except ValueError as exc:
            return _error(409, str(exc))
        return web.json_response({"accepted": text})

    async def _ota_start(self, request: web.Request) -> web.Response:
        """POST /ota/rollouts?node=ID&node=ID|site=1&canary=N&force=1&who=NAME, the bundle
        (.rsb) as the body (application/octet-stream, which a web page cannot send cross-site
        without a CORS preflight either); guarded like commands. 202 with the rollout."""
        refused = self._refuse(request, write=True, content_type="application/octet-stream")
        if refused is not None:
            return refused
        if self.ota is None:
            return _error(503, "updates over the air are not available on this server")
        q = request.query
        nodes = q.getall("node", [])
        site = q.get("site", "") in ("1", "true", "yes")
        if site == bool(nodes):
            return _error(400, "give node=ID (one or more) or site=1, not both, not neither")
        try:
            canary = int(q.get("canary", "1"))
        except ValueError:
            return _error(400, f"canary: must be an integer 0..1000, got {q.get('canary')!r}")
        try:
            data = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "bundle too large for this server")
        try:
            rollout = self.ota.start(data, None if site else nodes, canary,
                                     q.get("force", "") in ("1", "true", "yes"),
                                     who=q.get("who", "unknown")[:100],
                                     origin=str(request.remote))
        except OtaError as exc:
            return _error(exc.status, str(exc))
        return web.json_response(rollout.doc(), status=202)

    async def _ota_rollout(self, request: web.Request) -> web.Response:
        """GET /ota/rollouts/{id}: a rollout's progress and outcome per node."""
        refused = self._refuse(request)
        if refused is not None:
            return refused
        try:
            rid = int(request.match_info["id"])
        except ValueError:
            return _error(400, "rollout id: must be an integer")
        doc = None if self.ota is None else self.ota.rollout_doc(rid)
        if doc is None:
            return _error(404, f"no rollout {rid} on this gateway")
        return web.json_response(doc)

    async def _ota_cancel(self, request: web.Request) -> web.Response:
        """POST /ota/rollouts/{id}/cancel {"who": NAME} ({id}: a rollout id, or `running`: the
        one running); guarded like commands. 200 with the rollout as cancelled."""
        refused = self._refuse(request, write=True)
        if refused is not None:
            return refused
        if self.ota is None:
            return _error(503, "updates over the air are not available on this server")
        text = request.match_info["id"]
        try:
            rid = None if text == "running" else int(text)
        except ValueError:
            return _error(400, f"rollout id: must be an integer or `running`, got {text[:40]!r}")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error(400, "body: must be a JSON object {\"who\": NAME}")
        who = body.get("who")
        try:
            rollout = self.ota.cancel(rid, who=str(who)[:100] if who else "unknown")
        except OtaError as exc:
            return _error(exc.status, str(exc))
        return web.json_response(rollout.doc())

    async def _metrics(self, _request: web.Request) -> web.Response:
        resp = web.Response(body=self.metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE
        return resp


def storage_doc(q: Any) -> dict[str, Any]:
    """/status queue.storage: the current storage error (a full disk), and damaged queue
    files recovered (moved aside, readable records re-queued)."""
    storage = getattr(q, "storage", None)
    if storage is None:
        return {"error": None, "disk_full": False}
    return {"error": storage.error, "disk_full": storage.disk_full, "errors": storage.errors,
            "recovered": storage.recovered}


def _host_port(url: URL) -> tuple[str, int] | None:
    if url.host is None or url.port is None:
        return None
    return url.host.lower().strip("[]"), url.port


def _this_server(request: web.Request) -> tuple[str, int] | None:
    """(host, port) of the Host header when it names this server: a loopback address or
    localhost (never a DNS name that could be rebound), on the port the request came in."""
    try:
        named = _host_port(URL(f"http://{request.headers.get('Host', '')}/"))
    except ValueError:
        return None
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    if named is None or not sock:
        return None
    host, port = named
    if port != sock[1]:
        return None
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback and host != sock[0]:
                return None
        except ValueError:
            return None
    return named


def _origin(origin: str) -> tuple[str, int] | None:
    try:
        url = URL(origin)
    except ValueError:
        return None
    return _host_port(url) if url.scheme == "http" else None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def serve(status: Status, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start the server; returns the runner (cleanup() stops it) and the bound port."""
    runner = web.AppRunner(status.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, bound
