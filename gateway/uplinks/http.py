"""HTTP uplink (PROTOCOL.md section 3): POST each batch as application/cbor, exactly once.

Batches go out one at a time in the order they were cut (that keeps each node's records in seq
order across batches). A batch is retried with the same Idempotency-Key and the same body until
a 2xx, with exponential backoff and full jitter; 408, 429, 5xx and connection errors are
retried, any other 4xx means the backend calls the batch malformed: it is moved to the
dead-letter table with the backend's one-line reason, so it cannot block the queue.

A `Retry-After` on a retryable answer (seconds or an HTTP date) replaces the backoff delay for
that attempt (capped at an hour). Options: gzip (`Content-Encoding: gzip`, the same compressed
bytes on every retry), a bearer token (read from a file or the environment at start), TLS
verified with a CA file and an optional client certificate.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import logging
import random
import ssl
import time
from collections.abc import Callable, Sequence

import aiohttp

from .. import logs
from ..config import UplinkConfig
from ..errors import ConfigError, UplinkError
from ..queue import Batch, Queue
from ..storage_health import keep_trying

log = logging.getLogger("roadside.gateway.uplink")

IDLE = "idle"
SENDING = "sending"
RETRYING = "retrying"
DOWN = "down"           # the backend cannot be reached at all (connection errors)

RETRYABLE = {408, 429}
RETRY_AFTER_MAX_S = 3600.0
# A backend's answer is read only this far (a 500 with a 48 MiB body cost 186 MiB of RSS and
# became a 50 MB last_error); beyond it the connection is closed unread.
BODY_READ_MAX = 4096
REASON_MAX = 200          # characters of the backend's reason kept in last_error and logs


async def read_head(resp: aiohttp.ClientResponse, limit: int = BODY_READ_MAX) -> bytes:
    """At most `limit` bytes of the body (chunked or not); the rest is never read."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = await resp.content.read(limit - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def reason_line(body: bytes, fallback: str) -> str:
    """The first non-empty line of a body as one short printable line."""
    text = body.decode("utf-8", errors="replace").strip()
    line = text.splitlines()[0] if text else fallback
    line = "".join(ch if ch.isprintable() else "?" for ch in line)
    return line if len(line) <= REASON_MAX else line[:REASON_MAX] + "..."


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), else None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_MAX_S)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    now = time.time() if now is None else now
    return min(max(0.0, when - now), RETRY_AFTER_MAX_S)


def ssl_context(config: UplinkConfig) -> ssl.SSLContext:
    """Verify the server (with `ca_file`, else the system's CAs); present a client cert if set."""
    try:
        ctx = ssl.create_default_context(
            cafile=str(config.ca_file) if config.ca_file is not None else None)
        if config.cert_file is not None:
            ctx.load_cert_chain(str(config.cert_file),
                                str(config.key_file) if config.key_file is not None else None)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"uplink {config.name}: cannot load the TLS files (ca_file,"
                          f" cert_file, key_file): {exc}; check they are PEM files") from exc
    return ctx


def backoff(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, initial * 2**attempt)]."""
    return rng.uniform(0, min(cap, initial * (2 ** min(attempt, 30))))


class HttpUplink:
    """Delivers the queue's batches to one HTTP backend."""

    def __init__(self, config: UplinkConfig, queue: Queue, all_uplinks: Sequence[str],
                 on_delivered: Callable[[], None] | None = None,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.name = config.name
        self.url = config.url
        self.queue = queue
        self.all_uplinks = tuple(all_uplinks)
        self.on_delivered = on_delivered
        self.rng = rng or random.Random()
        self.state = IDLE
        self.delivered = 0            # records
        self.delivered_batches = 0
        self.failures = 0             # failed attempts
        self.dead_letters = 0
        self.last_error: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._token = config.token()   # read once at start (ConfigError if it went away)
        tls = config.url.startswith("https:") or config.ca_file is not None
        self._ssl: ssl.SSLContext | None = ssl_context(config) if tls else None
        self._gz: tuple[str, bytes] | None = None   # (batch id, gzipped body) of the last batch

    def status(self) -> dict[str, object]:
        return {"name": self.name, "url": self.url, "state": self.state,
                "delivered": self.delivered, "delivered_batches": self.delivered_batches,
                "failures": self.failures, "dead_letters": self.dead_letters,
                "last_error": self.last_error}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))
        return self._session

    async def post(self, batch: Batch) -> None:
        """One attempt; returns on 2xx, raises UplinkError(retryable) otherwise."""
        headers = {"Content-Type": "application/cbor", "Idempotency-Key": batch.id}
        body = batch.body
        if self.config.gzip:
            if self._gz is None or self._gz[0] != batch.id:
                self._gz = (batch.id, gzip.compress(batch.body, mtime=0))
            body = self._gz[1]
            headers["Content-Encoding"] = "gzip"
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            async with self._client().post(self.url, data=body, headers=headers,
                                           ssl=self._ssl if self._ssl is not None else True
                                           ) as resp:
                if 200 <= resp.status < 300:
                    await read_head(resp)   # a short body keeps the connection for reuse
                    return
                reason = reason_line(await read_head(resp), resp.reason or "")
                retryable = resp.status in RETRYABLE or resp.status >= 500
                raise UplinkError(f"HTTP {resp.status}: {reason}", retryable,
                                  retry_after(resp.headers.get("Retry-After"))
                                  if retryable else None)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UplinkError(f"cannot reach {self.url}: {exc or type(exc).__name__}",
                              True) from exc

    async def deliver(self, batch: Batch) -> bool:
        """Send `batch` until a 2xx (True) or a non-retryable refusal (False, dead-lettered)."""
        attempt = 0
        while True:
            self.state = SENDING if attempt == 0 else self.state
            try:
                await self.post(batch)
            except UplinkError as exc:
                self.failures += 1
                self.last_error = str(exc)
                if not exc.retryable:
                    log.error(f"uplink {self.name}: batch {batch.id} ({len(batch)} records)"
                              f" refused: {exc}; moved to the dead-letter table",
                              extra=logs.batch_fields(batch, uplink=self.name, error=str(exc)))
                    await keep_trying(self.queue, "store the dead letter",
                                      self.queue.dead_letter, batch.id, self.name, str(exc),
                                      self.all_uplinks)
                    self.dead_letters += 1
                    self.state = IDLE
                    return False
                self.state = DOWN if exc.__cause__ is not None else RETRYING
                delay = backoff(attempt, self.config.backoff_initial_s,
                                self.config.backoff_max_s, self.rng)
                if exc.retry_after is not None:
                    delay = exc.retry_after    # the backend said when: neither sooner nor later
                if attempt == 0 or attempt % 10 == 0 or exc.retry_after is not None:
                    log.warning(f"uplink {self.name}: batch {batch.id}: {exc};"
                                f" retrying (attempt {attempt + 1}, next in {delay:.2f} s)",
                                extra=logs.batch_fields(batch, uplink=self.name, error=str(exc),
                                                        attempt=attempt + 1))
                attempt += 1
                await asyncio.sleep(delay)
                continue
            # Retried until it commits: a full disk must not stop the daemon (it would post
            # the same batch again after every restart and never get further).
            await keep_trying(self.queue, "record the delivery", self.queue.batch_delivered,
                              batch.id, self.name, self.all_uplinks)
            self.delivered += len(batch)
            self.delivered_batches += 1
            self.state = IDLE
            if attempt:
                log.info(f"uplink {self.name}: batch {batch.id} delivered after"
                         f" {attempt + 1} attempts",
                         extra=logs.batch_fields(batch, uplink=self.name, attempt=attempt + 1))
            return True

    def notify(self) -> None:
        """A batch was cut: look for work now."""
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: deliver pending batches in order, waiting for a cut when idle."""
        try:
            while True:
                self._wake.clear()   # before looking, so a cut in between is not missed
                batch = await self.queue.call(self.queue.next_pending, self.name)
                if batch is None:
                    try:
                        async with asyncio.timeout(1.0):   # not wait_for: see Batcher.run
                            await self._wake.wait()
                    except TimeoutError:
                        pass
                    continue
                await self.deliver(batch)
                if self.on_delivered is not None:
                    self.on_delivered()
        finally:
            await self.close()
