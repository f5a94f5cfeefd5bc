"""Cuts batches from the queue by size and age, and wakes the uplinks.

A batch is cut when `max_records` or `max_bytes` worth of records wait, or when the oldest
waiting record has waited `max_age_s`. Only a few batches are cut ahead of delivery (of the
most advanced uplink, when there are several): while every backend is unreachable records
keep accumulating unbatched, so that when one comes back they leave in full batches rather
than as thousands of tiny ones.

Priority lane: a stored PRIORITY record (alarm, toll transaction) wakes the batcher, which cuts
it at once together with its node's older waiting records (Queue.next_priority_batch), so it
reaches the uplink within milliseconds and still never overtakes its own node's records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from .config import BatchConfig
from .queue import Queue

log = logging.getLogger("roadside.gateway.batcher")

MAX_PENDING = 2
PRIORITY_EXTRA = 8     # priority batches allowed beyond MAX_PENDING


class Batcher:
    def __init__(self, queue: Queue, config: BatchConfig, max_pending: int = MAX_PENDING,
                 uplinks: Sequence[str] = ()) -> None:
        self.queue = queue
        self.config = config
        self.max_pending = max_pending
        self.uplinks = tuple(uplinks)
        self._wake = asyncio.Event()
        self.on_cut: list[Callable[[], None]] = []   # uplinks' notify()
        self.batches_cut = 0

    def wake(self) -> None:
        """Records were stored, or a batch was delivered: look again now."""
        self._wake.set()

    def _due(self, now: float) -> bool:
        count, size, oldest = self.queue.waiting(self.config.max_records)
        if count == 0:
            return False
        return (count >= self.config.max_records or size >= self.config.max_bytes
                or oldest is None or now - oldest >= self.config.max_age_s)

    def _ahead(self) -> int:
        """Batches cut and not yet delivered by the most advanced uplink.

        Each uplink delivers from its own cursor, so one uplink that is down must not stop the
        cutting for the others: it falls behind (its batches wait in the queue, within the
        queue's bound) and catches up when it is back.
        """
        if len(self.uplinks) < 2:
            return self.queue.batches_pending()
        return min(self.queue.backlog(u) for u in self.uplinks)

    def cut_due(self, now: float | None = None) -> int:
        """Cut as many batches as are due and allowed (synchronous: on the queue's writer
        thread, through Queue.aio.cut)."""
        now = time.time() if now is None else now
        n = 0
        # Priority lane: a PRIORITY record is cut at once, with its node's older waiting
        # records, ahead of the size/age rules (a little beyond max_pending, so an alarm
        # never waits for telemetry to be delivered first; bounded while uplinks are down).
        while (self._ahead() < self.max_pending + PRIORITY_EXTRA
               and self.queue.priority_waiting()):
            if self.queue.next_priority_batch(self.config.max_records, self.config.max_bytes,
                                              now) is None:
                break
            n += 1
        while self._ahead() < self.max_pending and self._due(now):
            batch = self.queue.next_batch(self.config.max_records, self.config.max_bytes, now)
            if batch is None:
                break
            n += 1
        return n

    async def run(self) -> None:
        """Until cancelled: cut due batches whenever woken, and at least every tick."""
        while True:
            tick = max(0.05, min(self.config.max_age_s / 4, 0.5))   # [batch] may be reloaded
            # A cut that cannot commit (full disk) is tried again on the next tick.
            n = await self.queue.aio.cut(self.cut_due)
            if n:
                self.batches_cut += n
                for notify in self.on_cut:
                    notify()
            self._wake.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel that
            # races with its timeout, and the task then never stops (a hung shutdown).
            try:
                async with asyncio.timeout(tick):
                    await self._wake.wait()
            except TimeoutError:
                pass
