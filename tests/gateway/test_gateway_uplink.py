"""HTTP uplink against the real reference receiver, and against small aiohttp servers."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest
from aiohttp import web
from roadside.gateway.config import BatchConfig, UplinkConfig
from roadside.gateway.protocol import Record
from roadside.gateway.queue import Queue
from roadside.gateway.uplinks.http import HttpUplink, backoff
from roadside.tools.sim.receiver_store import read_seqs
from support.waits import until


def uplink_config(url: str) -> UplinkConfig:
    return UplinkConfig("http", url, backoff_initial_s=0.01, backoff_max_s=0.05, timeout_s=5)


def fill(queue: Queue, nodes: int, per_node: int, chunk: int = 7) -> None:
    for n in range(nodes):
        for start in range(1, per_node + 1, chunk):
            seqs = range(start, min(start + chunk, per_node + 1))
            queue.store(f"wl-{n:04d}", "water",
                        [Record(s, 1_700_000_000 + s, 1, 0, {1: s / 10, 3: s}) for s in seqs],
                        start)


async def drain(queue: Queue, uplink: HttpUplink, max_records: int = 25) -> None:
    task = asyncio.create_task(uplink.run())
    try:
        # until the queue is empty and the uplink has finished its bookkeeping of the last
        # batch (the queue empties inside batch_delivered, a moment before that)
        while queue.depth() or uplink.state != "idle":
            if queue.depth() and queue.batches_pending() < 2:
                # On the queue's writer thread, as the batcher does: one SQLite connection.
                await queue.call(queue.next_batch, max_records, 1 << 20)
                uplink.notify()
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_retries_against_a_failing_receiver_deliver_exactly_once_in_order(tmp_path,
                                                                           start_receiver):
    receiver = start_receiver(fail_rate=0.5, fail_seed=3)
    queue = Queue(tmp_path / "q.sqlite", "gw-t", "site-t")
    fill(queue, 3, 120)
    uplink = HttpUplink(uplink_config(receiver.batches_url), queue, ["http"],
                        rng=random.Random(1))
    asyncio.run(asyncio.wait_for(drain(queue, uplink), 30))
    seqs = read_seqs(receiver.db)
    assert seqs == {f"wl-{n:04d}": list(range(1, 121)) for n in range(3)}
    assert uplink.failures > 0 and uplink.delivered == 360 and uplink.state == "idle"
    assert queue.depth() == 0 and queue.counters["delivered_records"] == 360


async def _serve(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/batches", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}/batches"


def test_same_key_and_body_on_every_retry_and_429_408_retried(tmp_path):
    seen: list[tuple[str, bytes]] = []
    types: list[str] = []
    answers = [429, 408, 500, 503, 200]

    async def handler(request: web.Request) -> web.Response:
        # Recorded and checked after the run: an assert here would only turn into a 500,
        # retried until the test's timeout.
        seen.append((request.headers["Idempotency-Key"], await request.read()))
        types.append(request.content_type)
        return web.Response(status=answers[len(seen) - 1], text="x")

    async def main():
        runner, url = await _serve(handler)
        try:
            queue = Queue(tmp_path / "q.sqlite")
            fill(queue, 1, 5)
            batch = queue.next_batch(100, 1 << 20)
            uplink = HttpUplink(uplink_config(url), queue, ["http"])
            assert await uplink.deliver(batch)
            assert uplink.failures == 4 and queue.depth() == 0
        finally:
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(main(), 20))
    assert types == ["application/cbor"] * 5
    assert len(seen) == 5 and len(set(seen)) == 1
    assert seen[0][0] and seen[0][1]


def test_a_refused_batch_goes_to_the_dead_letter_table_and_the_queue_moves_on(tmp_path):
    calls = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(request.headers["Idempotency-Key"])
        if len(calls) == 1:
            return web.Response(status=400, text="records[0]: bad seq\nmore detail\n")
        return web.Response(status=200, text="{}")

    async def main():
        runner, url = await _serve(handler)
        try:
            queue = Queue(tmp_path / "q.sqlite")
            fill(queue, 1, 20)
            uplink = HttpUplink(uplink_config(url), queue, ["http"])
            await drain(queue, uplink, max_records=10)
            assert uplink.dead_letters == 1 and queue.counters["dead_letters"] == 1
            assert uplink.last_error == "HTTP 400: records[0]: bad seq"
            assert uplink.delivered == 10 and queue.depth() == 0
            assert uplink.status()["state"] == "idle"
        finally:
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(main(), 20))
    assert len(calls) == 2 and calls[0] != calls[1]


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_wrong_token_or_url_is_retried_not_dead_lettered(tmp_path, status):
    """Every batch would get these answers: a misconfigured gateway keeps its batches."""
    calls = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(request.headers["Idempotency-Key"])
        return web.Response(status=status if len(calls) < 3 else 200, text="no")

    async def main():
        runner, url = await _serve(handler)
        try:
            queue = Queue(tmp_path / "q.sqlite")
            fill(queue, 1, 5)
            batch = queue.next_batch(100, 1 << 20)
            uplink = HttpUplink(uplink_config(url), queue, ["http"])
            assert await uplink.deliver(batch)
            assert uplink.dead_letters == 0 and uplink.failures == 2 and queue.depth() == 0
            assert f"HTTP {status}: " in uplink.last_error and "gateway.toml" in uplink.last_error
        finally:
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(main(), 20))
    assert len(calls) == 3 and len(set(calls)) == 1


def test_unreachable_backend_is_down_and_retried(tmp_path):
    async def main():
        queue = Queue(tmp_path / "q.sqlite")
        fill(queue, 1, 3)
        batch = queue.next_batch(100, 1 << 20)
        uplink = HttpUplink(uplink_config("http://127.0.0.1:9/batches"), queue, ["http"])
        task = asyncio.create_task(uplink.deliver(batch))
        await until(lambda: uplink.failures >= 2, "the unreachable backend retried")
        assert uplink.state == "down" and not task.done()
        assert "cannot reach" in uplink.last_error
        task.cancel()
        await uplink.close()
        assert queue.depth() == 3 and queue.batches_pending() == 1

    asyncio.run(main())


def test_backoff_is_full_jitter_and_capped():
    rng = random.Random(0)
    values = [backoff(a, 0.2, 5.0, rng) for a in range(40)]
    assert all(0 <= v <= 5.0 for v in values)
    assert max(values[:3]) <= 0.8 and max(values[10:]) > 1.0


def test_batch_config_defaults():
    assert BatchConfig() == BatchConfig(200, 65536, 1.0)
