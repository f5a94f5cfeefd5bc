"""The HTTP way in: POST /batches as the reference receiver answers it (PROTOCOL.md section 3).

Same endpoint, same Content-Type rule, same Idempotency-Key check and the same JSON answers,
replays included; 503 (retried by the gateway) when PostgreSQL is unavailable. GET /healthz
answers "ok" while the database answers; GET /stats this process's counters.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from aiohttp import web

from .store import Store, StoreUnavailable, first_line
from .validate import BadBatch, parse

MAX_BODY = 16 * 1024 * 1024


class IngestHttp:
    def __init__(self, store: Store, extra_stats: Any = None,
                 tokens: list[bytes] | None = None) -> None:
        self.store = store
        self.refused = 0              # 400: malformed batches (never stored)
        self.unauthorized = 0         # 401: no or an unknown bearer token (the gateway retries)
        self.tokens = tokens          # None: any sender (auth left to the load balancer)
        self.extra_stats = extra_stats   # () -> dict, e.g. the MQTT subscriber's counters

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/batches", self.post_batch)
        app.router.add_get("/stats", self.get_stats)
        app.router.add_get("/healthz", self.get_health)
        return app

    async def post_batch(self, request: web.Request) -> web.Response:
        if self.tokens is not None and not self._authorized(request):
            self.unauthorized += 1
            return text(401, "missing or unknown bearer token: set the uplink's token_file"
                             " (or token_env) in gateway.toml to a token in ingest's --tokens")
        if request.content_type != "application/cbor":
            return text(415, "Content-Type must be application/cbor, got"
                             f" {request.content_type!r}")
        body = await request.read()
        try:
            batch = parse(body, request.headers.get("Idempotency-Key"))
        except BadBatch as exc:
            self.refused += 1
            return text(400, str(exc))
        try:
            result = await self.store.store_batch(batch)
        except StoreUnavailable as exc:
            return text(503, f"{exc}; nothing stored, retry later")
        return web.json_response(result)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        # every token compared, in constant time each: which one matched leaks nothing
        return sum(hmac.compare_digest(given.strip().encode(), t) for t in self.tokens or []) > 0

    async def get_stats(self, _request: web.Request) -> web.Response:
        stats: dict[str, Any] = {**self.store.counters(), "refused": self.refused,
                                 "unauthorized": self.unauthorized}
        if self.extra_stats is not None:
            stats["mqtt"] = self.extra_stats()
        return web.json_response(stats)

    async def get_health(self, _request: web.Request) -> web.Response:
        try:
            async with self.store.pool.connection(timeout=2.0) as conn:
                await conn.execute("SELECT 1")
        except Exception as exc:
            return text(503, f"database unavailable: {first_line(exc)}")
        return text(200, "ok")


def text(status: int, line: str) -> web.Response:
    return web.Response(status=status, text=line + "\n", content_type="text/plain")


def read_tokens(path: Path) -> list[bytes]:
    """--tokens FILE: the accepted bearer tokens, one a line (a site's gateways share one, or
    each has its own so one can be revoked); blank lines and # comments ignored."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--tokens {path}: cannot read it ({exc})") from None
    tokens = [ln.strip().encode() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not tokens:
        raise ValueError(f"--tokens {path}: no token in it; write one a line (e.g. the gateway's"
                         " token_file contents)")
    return tokens
