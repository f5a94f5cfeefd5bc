"""One `roadside ingest` process: the HTTP receiver, and the MQTT group member when asked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aiohttp import web

from ..errors import ToolError
from .http import IngestHttp
from .mqtt import MqttIngest, MqttOptions
from .store import Store, init_db, redact


@dataclass
class IngestOptions:
    db: str                           # postgresql://user:password@host:port/database
    host: str = "127.0.0.1"
    port: int = 8080
    mqtt: MqttOptions | None = None
    pool: int = 4                     # connections to PostgreSQL (concurrent batches)
    init_only: bool = False           # --init-db: create the schema and exit
    tokens: list[bytes] | None = None  # --tokens: accepted bearer tokens (None: any sender)


async def serve(options: IngestOptions, ready: asyncio.Event | None = None) -> None:
    """Run until cancelled; prints `ingest listening on http://HOST:PORT`."""
    # The pool's reconnect attempts while PostgreSQL restarts are multi-line warnings; the
    # batches refused meanwhile are answered 503 and counted (/stats "unavailable").
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    store = await Store.open(options.db, size=options.pool)
    subscriber = MqttIngest(options.mqtt, store) if options.mqtt else None
    ingest = IngestHttp(store, subscriber.counters if subscriber else None, options.tokens)
    runner = web.AppRunner(ingest.app(), access_log=None)
    tasks: list[asyncio.Task[None]] = []
    try:
        await runner.setup()
        site = web.TCPSite(runner, options.host, options.port)
        try:
            await site.start()
        except OSError as exc:
            raise ToolError(f"cannot listen on {options.host}:{options.port}: {exc.strerror};"
                            " pick another port with --listen HOST:PORT") from exc
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"ingest listening on http://{options.host}:{port} db={redact(options.db)}",
              flush=True)
        if subscriber is not None:
            tasks.append(asyncio.create_task(subscriber.run(), name="mqtt ingest"))
        if ready is not None:
            ready.set()
        await asyncio.gather(*tasks) if tasks else await asyncio.Event().wait()
    finally:
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await runner.cleanup()
        await store.close()


async def init(options: IngestOptions) -> bool:
    store = await Store.open(options.db, size=1, init=False)
    try:
        async with store.pool.connection() as conn:
            return await init_db(conn)
    finally:
        await store.close()


def run(options: IngestOptions) -> int:
    """Blocking entry for the CLI: serve until SIGINT/SIGTERM (or init the schema and exit)."""
    import signal

    async def main() -> int:
        if options.init_only:
            timescale = await init(options)
            print(f"schema ready in {redact(options.db)}"
                  f"{' (records is a TimescaleDB hypertable)' if timescale else ''}")
            return 0
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
        with contextlib.suppress(asyncio.CancelledError):
            await serve(options)
        return 0

    return asyncio.run(main())
