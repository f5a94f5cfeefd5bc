"""Several uplinks at once: each delivers from its own cursor; one down blocks no other."""

from __future__ import annotations

import asyncio
import contextlib

import cbor2
from aiohttp import web
from roadside.gateway.batcher import Batcher
from roadside.gateway.config import BatchConfig, UplinkConfig
from roadside.gateway.protocol import Record
from roadside.gateway.queue import Queue
from roadside.gateway.uplinks.http import HttpUplink
from roadside.tools.sim.receiver_store import read_seqs


async def serve_post(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/batches", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/batches"


def test_one_uplink_down_does_not_block_the_other(tmp_path, start_receiver):
    receiver = start_receiver()
    up = {"ok": False}
    got: dict[str, list[int]] = {}

    async def flaky(request: web.Request) -> web.Response:
        if not up["ok"]:
            return web.Response(status=503, text="down for maintenance")
        for r in cbor2.loads(await request.read())["records"]:
            got.setdefault(r["node"], []).append(r["seq"])
        return web.Response(text="{}")

    async def main():
        runner, url = await serve_post(flaky)
        queue = Queue(tmp_path / "q.sqlite", "gw", "site")
        names = ["main", "backup"]
        batcher = Batcher(queue, BatchConfig(10, 1 << 20, 0.0), uplinks=names)
        uplinks = [HttpUplink(UplinkConfig("http", u, name=n, backoff_initial_s=0.01,
                                           backoff_max_s=0.05), queue, names,
                              on_delivered=batcher.wake)
                   for n, u in zip(names, (receiver.batches_url, url), strict=True)]
        batcher.on_cut = [u.notify for u in uplinks]
        tasks = [asyncio.create_task(c) for c in (batcher.run(), *(u.run() for u in uplinks))]
        try:
            for start in range(1, 101, 10):
                # On the queue's writer thread, like the sessions: one SQLite connection.
                await queue.call(queue.store, "wl-1", "water",
                                 [Record(s, 1_700_000_000 + s, 1, 0, {1: 1.0})
                                  for s in range(start, start + 10)], start)
                batcher.wake()
                await asyncio.sleep(0.02)
            for _ in range(300):
                if uplinks[0].delivered == 100:
                    break
                await asyncio.sleep(0.02)
            # main got everything while backup is down; the queue keeps it for backup.
            assert uplinks[0].delivered == 100 and uplinks[1].delivered == 0
            assert uplinks[1].state == "retrying" and "503" in uplinks[1].last_error
            assert queue.depth() == 100 and queue.backlog("main") == 0
            up["ok"] = True
            for _ in range(300):
                if queue.depth() == 0:
                    break
                await asyncio.sleep(0.02)
            assert queue.depth() == 0 and queue.batches_pending() == 0
            assert queue.counters["delivered_records"] == 100
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await runner.cleanup()
            queue.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    assert read_seqs(receiver.db) == {"wl-1": list(range(1, 101))}
    assert got == {"wl-1": list(range(1, 101))}   # in seq order, once each


def test_dead_letter_on_one_uplink_keeps_the_batch_for_the_other(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    q.store("a", "water", [Record(1, 1, 1, 0, {1: 1.0})], 1)
    b = q.next_batch(10, 1 << 20)
    q.dead_letter(b.id, "one", "HTTP 400: bad", ["one", "two"])
    assert q.depth() == 1 and q.next_pending("one") is None and q.backlog("two") == 1
    assert q.batch_delivered(b.id, "two", ["one", "two"])
    assert q.depth() == 0
    assert q._db.execute("SELECT id, uplink FROM dead_letters").fetchall() == [(b.id, "one")]


def test_settle_after_an_uplink_left_the_config(tmp_path):
    """Batches that only a removed uplink still lacked are deleted (Queue.settle, run by the
    daemon at start and when a reload changes the uplinks): else they stay pending for good
    and the batcher, which cuts only a few ahead, stops."""

    async def main():
        queue = Queue(tmp_path / "q.sqlite", "gw", "site")
        try:
            await queue.call(queue.store, "wl-1", "water",
                             [Record(s, 1_700_000_000 + s, 1, 0, {1: 1.0}) for s in range(1, 21)],
                             1)
            a = await queue.call(queue.next_batch, 10, 1 << 20, 0.0)
            b = await queue.call(queue.next_batch, 10, 1 << 20, 0.0)
            for batch in (a, b):     # "main" delivered both; "backup" (down) neither
                assert not await queue.call(queue.batch_delivered, batch.id, "main",
                                            ["main", "backup"])
            assert queue.batches_pending() == 2
            assert await queue.call(queue.settle, ["main", "backup"]) == 0
            assert queue.batches_pending() == 2 and queue.depth() == 20
            assert await queue.call(queue.settle, ["main"]) == 2     # backup was removed
            assert queue.batches_pending() == 0 and queue.depth() == 0
            assert queue.counters["delivered_records"] == 20
        finally:
            queue.close()

    asyncio.run(asyncio.wait_for(main(), 20))
