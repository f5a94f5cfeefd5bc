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

The retries, the backoff, the dead letters and the run loop are the Uplink base's (base.py);
this module is the POST and how its answers read.
"""

from __future__ import annotations

import email.utils
import gzip
import random
import time
from collections.abc import Callable, Sequence

import aiohttp

from ..config import UplinkConfig
from ..errors import UplinkError
from ..queue import Batch, Queue
from .base import Uplink
from .base import backoff as backoff  # its old home, still imported from here

RETRYABLE = {408, 429}
# Answers about the gateway's setup, not the batch (a wrong token or URL): every batch would
# get them, so they are retried with backoff and logged, never dead-lettered.
SETUP_PROBLEM = {401: "token", 403: "token", 404: "url", 405: "url", 407: "proxy"}
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


class HttpUplink(Uplink):
    """Delivers the queue's batches to one HTTP backend."""

    type = "http"

    def __init__(self, config: UplinkConfig, queue: Queue, all_uplinks: Sequence[str],
                 on_delivered: Callable[[], None] | None = None,
                 rng: random.Random | None = None) -> None:
        super().__init__(config, queue, all_uplinks, on_delivered, rng)
        self._session: aiohttp.ClientSession | None = None
        self._token = config.token()   # read once at start (ConfigError if it went away)
        self._ssl = self.tls_context(config.url.startswith("https:")
                                     or config.ca_file is not None)
        self._gz: tuple[str, bytes] | None = None   # (batch id, gzipped body) of the last batch

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))
        return self._session

    async def send(self, batch: Batch) -> None:
        """One POST; returns on 2xx, raises UplinkError(retryable) otherwise."""
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
                setup = SETUP_PROBLEM.get(resp.status)
                if setup is not None:
                    raise UplinkError(f"HTTP {resp.status}: {reason}; check the uplink's {setup}"
                                      f" in gateway.toml (batches are kept and retried)", True)
                retryable = resp.status in RETRYABLE or resp.status >= 500
                raise UplinkError(f"HTTP {resp.status}: {reason}", retryable,
                                  retry_after(resp.headers.get("Retry-After"))
                                  if retryable else None)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UplinkError(f"cannot reach {self.url}: {str(exc) or type(exc).__name__}",
                              True) from exc

    post = send   # one POST, by the name `roadside admin dead-letters retry` uses
