"""The Uplink interface: one run loop for every way batches leave the gateway (HTTP, MQTT).

An uplink takes the batches the batcher cut, in cut order, from its own cursor in the queue
and delivers each until the backend has it. Shared here: the states shown in /status, the
counters, backoff with full jitter, the TLS context, the run loop (wait for a cut, deliver
with retries, record the delivery), dead-lettering of a batch the backend refuses as
malformed, and reconnecting with backoff for uplinks that hold a connection. Bookkeeping
(a delivery, a dead letter) is retried until it commits (Queue.aio): a full disk must not
stop the daemon, which would post the same batch again after every restart.

A subclass implements `send` (one delivery attempt: returns when the backend has the batch,
raises UplinkError otherwise, `retryable` saying whether trying again may help, a `__cause__`
meaning the backend could not be reached) and, when it keeps a connection, `connect`,
`connected`, `disconnect` and `wait_for_work`; `close` releases what it holds. An uplink that
takes remote commands gets the Commander at construction (`commander`).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
import ssl
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

from .. import logs
from ..config import UplinkConfig
from ..errors import ConfigError, UplinkError
from ..queue import Batch, Queue

if TYPE_CHECKING:
    from ..commands import Commander

log = logging.getLogger("roadside.gateway.uplink")

# Uplink states shown in /status.
IDLE = "idle"
SENDING = "sending"
RETRYING = "retrying"   # the backend answered but not yet with "delivered" (e.g. HTTP 503)
DOWN = "down"           # the backend cannot be reached at all (connection errors)
CONNECTING = "connecting"   # an uplink with a connection, before its first connect

IDLE_WAIT_S = 1.0       # an idle uplink looks at the queue at least this often


def backoff(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, initial * 2**attempt)]."""
    return rng.uniform(0, min(cap, initial * (2 ** min(attempt, 30))))


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


class Uplink(abc.ABC):
    """Base class: states, counters, backoff, TLS, the run loop and the bookkeeping."""

    type: ClassVar[str] = "uplink"
    initial_state: ClassVar[str] = IDLE

    def __init__(self, config: UplinkConfig, queue: Queue, all_uplinks: Sequence[str],
                 on_delivered: Callable[[], None] | None = None,
                 rng: random.Random | None = None,
                 commander: Commander | None = None) -> None:
        self.config = config
        self.name = config.name
        self.url = config.url
        self.queue = queue
        self.all_uplinks = tuple(all_uplinks)   # a batch is done once every one has it
        self.on_delivered = on_delivered
        self.rng = rng or random.Random()
        # Remote commands (commands.Commander); used by uplinks that take them (MQTT with
        # command_topic), ignored by the others.
        self.commander = commander
        self.state = self.initial_state
        self.delivered = 0            # records
        self.delivered_batches = 0
        self.failures = 0             # failed attempts (deliveries and connections)
        self.dead_letters = 0
        self.last_error: str | None = None
        self._wake = asyncio.Event()

    def tls_context(self, tls: bool) -> ssl.SSLContext | None:
        """The TLS context from the uplink's config when `tls` (ConfigError: bad files)."""
        return ssl_context(self.config) if tls else None

    def backoff(self, attempt: int) -> float:
        return backoff(attempt, self.config.backoff_initial_s, self.config.backoff_max_s,
                       self.rng)

    def status(self) -> dict[str, object]:
        return {"name": self.name, "url": self.url, "type": self.type, "state": self.state,
                "delivered": self.delivered, "delivered_batches": self.delivered_batches,
                "failures": self.failures, "dead_letters": self.dead_letters,
                "last_error": self.last_error}

    # -- what a subclass implements -------------------------------------------------------

    @abc.abstractmethod
    async def send(self, batch: Batch) -> None:
        """One delivery attempt: returns once the backend has `batch`, else UplinkError."""

    @property
    def connected(self) -> bool:
        """Whether `send` can be tried now (an uplink without a connection: always)."""
        return True

    async def connect(self) -> None:  # noqa: B027 - optional: nothing without a connection
        """Open the connection; UplinkError (retryable, with a cause) when it cannot."""

    async def disconnect(self) -> None:  # noqa: B027 - optional, as connect
        """Drop the connection after an error (the next attempt connects again)."""

    async def wait_for_work(self, timeout: float) -> None:
        """Until a cut is notified or `timeout` passes; an uplink with a connection also
        returns by raising UplinkError when the connection ends meanwhile."""
        try:
            async with asyncio.timeout(timeout):   # not wait_for: see Batcher.run
                await self._wake.wait()
        except TimeoutError:
            pass

    async def close(self) -> None:
        """Release the connection and whatever else the uplink holds (idempotent)."""
        await self.disconnect()

    # -- the shared part ------------------------------------------------------------------

    def notify(self) -> None:
        """A batch was cut: look for work now."""
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: connect, deliver pending batches in order, waiting for a cut when
        idle; reconnect with backoff after the connection ends."""
        lost = 0      # 1 after a connection ended while idle: that was attempt 1
        try:
            while True:
                await self._connect(lost)
                lost = 0
                self._wake.clear()   # before looking, so a cut in between is not missed
                batch = await self.queue.aio.next_batch(self.name)
                if batch is None:
                    self.state = IDLE
                    try:
                        await self.wait_for_work(IDLE_WAIT_S)
                    except UplinkError as exc:      # the connection ended while idle
                        await self._connection_failed(exc, 0)
                        lost = 1
                    continue
                await self.deliver(batch)
                if self.on_delivered is not None:
                    self.on_delivered()
        finally:
            await self.close()

    async def _connect(self, attempt: int = 0) -> None:
        """Connect (nothing to do when connected), retrying with backoff until it works."""
        while not self.connected:
            try:
                await self.connect()
            except UplinkError as exc:
                await self._connection_failed(exc, attempt)
                attempt += 1

    async def _connection_failed(self, exc: UplinkError, attempt: int) -> None:
        self.failures += 1
        self.last_error = str(exc)
        self.state = DOWN
        await self.disconnect()
        delay = self.backoff(attempt)
        if attempt == 0 or attempt % 10 == 0:
            log.warning(f"uplink {self.name}: {self.last_error}; reconnecting"
                        f" (attempt {attempt + 1}, next in {delay:.2f} s)",
                        extra=logs.fields(uplink=self.name, error=self.last_error,
                                          attempt=attempt + 1))
        await asyncio.sleep(delay)

    async def deliver(self, batch: Batch) -> bool:
        """Send `batch` until the backend has it (True) or refuses it as malformed (False,
        moved to the dead-letter table with the backend's reason)."""
        attempt = 0
        while True:
            self.state = SENDING if attempt == 0 else self.state
            try:
                if not self.connected:
                    await self.connect()
                await self.send(batch)
            except UplinkError as exc:
                self.failures += 1
                self.last_error = str(exc)
                if not exc.retryable:
                    await self._dead_letter(batch, exc)
                    return False
                if exc.__cause__ is not None:
                    self.state = DOWN
                    await self.disconnect()
                else:
                    self.state = RETRYING
                delay = self.backoff(attempt)
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
            await self._delivered(batch)
            if attempt:
                log.info(f"uplink {self.name}: batch {batch.id} delivered after"
                         f" {attempt + 1} attempts",
                         extra=logs.batch_fields(batch, uplink=self.name, attempt=attempt + 1))
            return True

    async def _delivered(self, batch: Batch) -> None:
        # Retried until it commits: a full disk must not stop the daemon (it would post the
        # same batch again after every restart and never get further).
        await self.queue.aio.delivered(batch.id, self.name, self.all_uplinks)
        self.delivered += len(batch)
        self.delivered_batches += 1
        self.state = IDLE

    async def _dead_letter(self, batch: Batch, exc: UplinkError) -> None:
        log.error(f"uplink {self.name}: batch {batch.id} ({len(batch)} records)"
                  f" refused: {exc}; moved to the dead-letter table",
                  extra=logs.batch_fields(batch, uplink=self.name, error=str(exc)))
        await self.queue.aio.dead_letter(batch.id, self.name, str(exc), self.all_uplinks)
        self.dead_letters += 1
        self.state = IDLE
