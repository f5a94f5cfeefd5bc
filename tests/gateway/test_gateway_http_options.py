"""HTTP uplink options: gzip, bearer token, TLS with a CA file, Retry-After."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import ssl
import subprocess
import time

import pytest
from aiohttp import web
from roadside.gateway.config import UplinkConfig, load
from roadside.gateway.errors import ConfigError
from roadside.gateway.protocol import Record
from roadside.gateway.queue import Queue
from roadside.gateway.uplinks.http import HttpUplink, retry_after
from roadside.tools.sim.receiver_store import read_seqs
from support import system
from support.waits import until


def fill(queue: Queue, n: int) -> None:
    queue.store("wl-1", "water", [Record(s, 1_700_000_000 + s, 1, 0, {1: s / 10, 3: s})
                                  for s in range(1, n + 1)], 1)


async def serve(handler, ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner,
                                                                             str]:
    app = web.Application()
    app.router.add_post("/batches", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    scheme = "https" if ssl_context else "http"
    return runner, f"{scheme}://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/batches"


def test_gzip_bearer_token_from_file_and_retry_after(tmp_path, monkeypatch):
    seen: list[tuple[float, dict, bytes]] = []
    answers = [(429, {"Retry-After": "1"}), (503, {}), (200, {})]

    async def handler(request: web.Request) -> web.Response:
        # aiohttp decompresses request bodies; Content-Length tells what went on the wire.
        seen.append((time.monotonic(), dict(request.headers), await request.read()))
        status, headers = answers[len(seen) - 1]
        return web.Response(status=status, headers=headers, text="x")

    token = tmp_path / "token"
    token.write_text("s3cret-token\n")

    async def main():
        runner, url = await serve(handler)
        try:
            queue = Queue(tmp_path / "q.sqlite")
            fill(queue, 20)
            batch = queue.next_batch(100, 1 << 20)
            cfg = UplinkConfig("http", url, gzip=True, token_file=token,
                               backoff_initial_s=0.01, backoff_max_s=0.02)
            uplink = HttpUplink(cfg, queue, ["http"])
            assert await uplink.deliver(batch)
            await uplink.close()
            return batch
        finally:
            await runner.cleanup()

    batch = asyncio.run(asyncio.wait_for(main(), 20))
    assert len(seen) == 3
    for _, headers, body in seen:
        assert headers["Content-Encoding"] == "gzip"
        assert headers["Authorization"] == "Bearer s3cret-token"
        assert headers["Idempotency-Key"] == batch.id and body == batch.body
        assert int(headers["Content-Length"]) == len(gzip.compress(batch.body, mtime=0))
    assert seen[1][0] - seen[0][0] >= 0.95          # Retry-After: 1 honoured
    assert seen[2][0] - seen[1][0] < 0.5            # then the short backoff again


def test_gzip_to_the_reference_receiver(tmp_path, start_receiver):
    receiver = start_receiver()

    async def main():
        queue = Queue(tmp_path / "q.sqlite")
        fill(queue, 30)
        batch = queue.next_batch(100, 1 << 20)
        assert len(gzip.compress(batch.body)) < len(batch.body)
        uplink = HttpUplink(UplinkConfig("http", receiver.batches_url, gzip=True), queue,
                            ["http"])
        assert await uplink.deliver(batch)
        await uplink.close()

    asyncio.run(asyncio.wait_for(main(), 20))
    assert read_seqs(receiver.db) == {"wl-1": list(range(1, 31))}


def test_retry_after_parsing():
    assert retry_after("7") == 7.0 and retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now=1445412480) == 5.0
    assert retry_after("999999") == 3600.0


@pytest.fixture
def self_signed(tmp_path):
    openssl = shutil.which("openssl")
    system.require(openssl, "openssl CLI not installed (apt-get install -y openssl); needed to"
                            " make a self-signed test certificate")
    assert openssl is not None
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=20)
    return cert, key


def test_tls_with_a_ca_file_and_without(tmp_path, self_signed):
    cert, key = self_signed
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    calls = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(await request.read())
        return web.Response(text="{}")

    async def main():
        runner, url = await serve(handler, server_ctx)
        try:
            queue = Queue(tmp_path / "q.sqlite")
            fill(queue, 3)
            batch = queue.next_batch(100, 1 << 20)
            # Without the CA file the self-signed certificate is refused, and retried.
            plain = HttpUplink(UplinkConfig("http", url, backoff_initial_s=0.01,
                                            backoff_max_s=0.05), queue, ["http"])
            task = asyncio.create_task(plain.deliver(batch))
            await until(lambda: plain.failures >= 2, "the refused delivery retried")
            assert not task.done() and plain.state == "down" and not calls
            assert "certificate verify failed" in plain.last_error
            task.cancel()
            await plain.close()
            verified = HttpUplink(UplinkConfig("http", url, ca_file=cert), queue, ["http"])
            assert await verified.deliver(batch)
            await verified.close()
            assert calls == [batch.body] and queue.depth() == 0
        finally:
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_token_and_tls_config(tmp_path, monkeypatch, self_signed):
    cert, _ = self_signed
    base = '[gateway]\nid = "g"\nsite = "s"\ndata_dir = "d"\n[[uplink]]\ntype = "http"\n'
    cfg = tmp_path / "gw.toml"
    cfg.write_text(base + 'url = "https://x/b"\ntoken_env = "RS_TEST_TOKEN"\n'
                   f'ca_file = "{cert.name}"\ngzip = true\n')
    with pytest.raises(ConfigError, match="uplink\\[0\\].token_env: environment variable"
                                          " 'RS_TEST_TOKEN' is not set"):
        load(cfg)
    monkeypatch.setenv("RS_TEST_TOKEN", "abc")
    (u,) = load(cfg).uplinks
    assert (u.gzip, u.ca_file, u.token(), u.token_env) == (True, cert, "abc", "RS_TEST_TOKEN")
    assert "abc" not in repr(u)      # `roadside gateway check` prints the config
    cfg.write_text(base + 'url = "http://x/b"\ngzip = "yes"\n')
    with pytest.raises(ConfigError, match="uplink\\[0\\].gzip: must be true or false,"
                                          " got 'yes'"):
        load(cfg)
