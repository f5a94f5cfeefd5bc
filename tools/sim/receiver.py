"""The reference backend of PROTOCOL.md section 3: `roadside receiver`.

POST /batches takes one CBOR uplink batch, validates it against `uplink-batch` in
docs/protocol.cddl and stores it idempotently in SQLite. GET /stats answers JSON totals.
`--fail-rate` answers 503 to that fraction of POSTs before storing anything, so tests and the
demo can show the gateway's retries.
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ..errors import SchemaError, ToolError
from ..ingest.validate import BadBatch, check_key, check_seq_order, decode
from .cddl import PROTOCOL_CDDL, Schema
from .receiver_store import ReceiverStore

BATCH_RULE = "uplink-batch"
MAX_BODY = 16 * 1024 * 1024


@dataclass
class ReceiverOptions:
    """How a receiver runs; the CLI fills this from its flags."""

    db: Path
    host: str = "127.0.0.1"
    port: int = 8080
    fail_rate: float = 0.0
    fail_seed: int | None = None
    cddl: Path = PROTOCOL_CDDL


class Receiver:
    """Request handlers around one store and one schema."""

    def __init__(self, options: ReceiverOptions) -> None:
        if not 0.0 <= options.fail_rate < 1.0:
            raise ToolError(f"--fail-rate must be in [0, 1), got {options.fail_rate}")
        self.options = options
        self.schema = Schema.from_file(options.cddl)
        if not self.schema.has_type(BATCH_RULE):
            raise SchemaError(
                f"{options.cddl} has no rule {BATCH_RULE!r}; is it the protocol CDDL?"
            )
        self.store = ReceiverStore(options.db)
        self._rng = random.Random(options.fail_seed)
        # zcbor keeps per-node scratch state: validate one batch at a time.
        self._schema_lock = threading.Lock()
        self.failed_on_purpose = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/batches", self.post_batch)
        app.router.add_get("/stats", self.get_stats)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _app: web.Application) -> None:
        self.store.close()

    async def post_batch(self, request: web.Request) -> web.Response:
        if request.content_type != "application/cbor":
            return _text(
                415, f"Content-Type must be application/cbor, got {request.content_type!r}"
            )
        if self.options.fail_rate and self._rng.random() < self.options.fail_rate:
            self.failed_on_purpose += 1
            return _text(503, "simulated outage (--fail-rate); retry later")
        body = await request.read()
        try:
            key = request.headers.get("Idempotency-Key")
            batch = await asyncio.to_thread(self._check, body, key)
        except BadBatch as exc:
            return _text(400, str(exc))
        result = await asyncio.to_thread(self.store.store_batch, batch)
        return web.json_response(
            {"batch": batch["batch"], "duplicate_batch": result.duplicate_batch,
             "stored": result.stored, "duplicate_records": result.duplicate_records}
        )

    def _check(self, body: bytes, key: str | None) -> dict[str, Any]:
        obj = decode(body)
        with self._schema_lock:
            try:
                batch = self.schema.validate(obj, BATCH_RULE)
            except SchemaError as exc:
                raise BadBatch(str(exc)) from exc
        check_key(batch, key)
        check_seq_order(batch)
        return batch

    async def get_stats(self, _request: web.Request) -> web.Response:
        stats = await asyncio.to_thread(self.store.stats)
        stats["failed_on_purpose"] = self.failed_on_purpose
        return web.json_response(stats)


def _text(status: int, line: str) -> web.Response:
    return web.Response(status=status, text=line + "\n", content_type="text/plain")


async def serve(options: ReceiverOptions, ready: asyncio.Event | None = None) -> None:
    """Run until cancelled; prints `listening on http://HOST:PORT` (the real port when 0)."""
    receiver = Receiver(options)
    runner = web.AppRunner(receiver.app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, options.host, options.port)
        try:
            await site.start()
        except OSError as exc:
            raise ToolError(
                f"cannot listen on {options.host}:{options.port}: {exc.strerror};"
                " pick another port with --listen HOST:PORT"
            ) from exc
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"receiver listening on http://{options.host}:{port} db={options.db}", flush=True)
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(options: ReceiverOptions) -> int:
    """Blocking entry for the CLI: serve until SIGINT/SIGTERM."""
    import signal

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
        try:
            await serve(options)
        except asyncio.CancelledError:
            pass

    asyncio.run(main())
    return 0
