"""A hostile backend: a real aiohttp server on loopback answers 500 with a 48 MiB body (with a
Content-Length, and chunked). The uplink reads a few KiB of it, keeps a one-line reason of at
most 200 characters, and stays small in memory; the batch is kept for the next attempt."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest
from aiohttp import web
from roadside.gateway.config import UplinkConfig
from roadside.gateway.errors import UplinkError
from roadside.gateway.queue import Queue
from roadside.gateway.uplinks.http import HttpUplink
from test_gateway_http_options import fill

BODY = 48 * 1024 * 1024
CHUNK = b"\x1b[31m" + b"A" * 65536 + b"\n"   # a terminal escape, a line far over the cap


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_huge_error_body_is_not_read_whole(tmp_path, chunked):
    sent = {"bytes": 0}

    async def main():
        finished = asyncio.Event()

        async def handler(request: web.Request) -> web.StreamResponse:
            await request.read()
            resp = web.StreamResponse(status=500)
            if not chunked:
                resp.content_length = BODY
            await resp.prepare(request)
            try:
                while sent["bytes"] < BODY:
                    await resp.write(CHUNK[: BODY - sent["bytes"]])
                    sent["bytes"] += min(len(CHUNK), BODY - sent["bytes"])
                await resp.write_eof()
            except (ConnectionError, OSError):
                pass          # the client hung up: what it took is counted
            finally:
                finished.set()
            return resp

        app = web.Application()
        app.router.add_post("/batches", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/batches"
        try:
            queue = Queue(tmp_path / "q.sqlite")
            fill(queue, 5)
            batch = queue.next_batch(100, 1 << 20)
            uplink = HttpUplink(UplinkConfig("http", url, timeout_s=30), queue, ["http"])
            tracemalloc.start()
            try:
                with pytest.raises(UplinkError) as err:
                    await uplink.post(batch)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            await uplink.close()
            async with asyncio.timeout(30):
                await finished.wait()
            assert queue.next_pending("http").id == batch.id     # kept for the next attempt
            return str(err.value), err.value.retryable, peak
        finally:
            await runner.cleanup()

    message, retryable, peak = asyncio.run(asyncio.wait_for(main(), 60))
    assert retryable and message.startswith("HTTP 500: ?[31mAAAA")
    assert len(message) <= len("HTTP 500: ") + 200 + 3 and "\x1b" not in message
    assert sent["bytes"] < BODY           # the rest was never read: the client hung up
    assert peak < 8 * 1024 * 1024, f"{peak / 2**20:.1f} MiB allocated while posting"
