"""The queue as the event loop uses it: one async interface (`Queue.aio`) for the daemon, the
sessions, the batcher and the uplinks.

Every method here runs its queue work on the writer thread (writer.py) and returns once that
work committed; none of its callers touches the thread or a future. A RECORDS payload is handed
over whole, undecoded, with the session's node and resume point: decoding, validation and
storing happen on the writer thread (Intake.store_message), and the messages of several links
share one commit. Bookkeeping that must not be lost (a cut, a delivery, a dead letter) is
retried until it commits (storage_health.keep_trying); a store is not: its session answers busy
and the node keeps its records.

What the event loop only reads (depth, counters, the nodes' ACKs for /status) it reads from the
queue's in-memory mirror directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..storage_health import keep_trying
from .batches import Batches
from .intake import Intake
from .types import Batch, Incoming, Outcome, StoreResult
from .writer import Writer


class AsyncQueue:
    """Awaitable queue operations, each run on the writer thread (see the module). Made by
    Queue.aio with the queue as both of its halves, records in and batches out."""

    def __init__(self, intake: Intake, batches: Batches, writer: Writer) -> None:
        self._intake = intake
        self._batches = batches
        self._writer = writer

    async def store_message(self, node: str, role: str, payload: bytes, resume: int | None,
                            received: float) -> Outcome:
        """A RECORDS payload of `node`'s session: decoded, validated and stored (in a group
        commit with other links' messages), returned after the COMMIT. ProtocolError when it is
        malformed, QueueFullError / QueueError when it cannot be stored (answer busy)."""
        outcome: Outcome = await self._writer.submit_grouped(
            Incoming(node, role, payload, resume, received))
        return outcome

    async def hello(self, node: str, role: str, first_unacked: int, received: float,
                    bind_port: str | None) -> tuple[StoreResult, int]:
        """A HELLO: the ACK after its `from`, and the node's highest stored seq (Intake.greet);
        `bind_port` is remembered as the node's port."""
        return await self._intake.call(self._intake.greet, node, role, first_unacked,
                                       received, bind_port)

    async def cut(self, cut_due: Callable[[], int]) -> int:
        """The batcher's cut (Batcher.cut_due reads the queue and cuts on the writer thread),
        retried until it commits; returns the batches cut."""
        return await keep_trying(self._batches, "cut a batch", cut_due)

    async def next_batch(self, uplink: str) -> Batch | None:
        """The oldest batch `uplink` has not delivered (its cursor), None when there is none."""
        return await self._batches.call(self._batches.next_pending, uplink)

    async def delivered(self, batch_id: str, uplink: str, uplinks: Sequence[str]) -> bool:
        """`uplink` delivered the batch (retried until it commits); True when every uplink has
        it and it was deleted."""
        return await keep_trying(self._batches, "record the delivery",
                                 self._batches.batch_delivered, batch_id, uplink, uplinks)

    async def dead_letter(self, batch_id: str, uplink: str, reason: str,
                          uplinks: Sequence[str]) -> None:
        """`uplink`'s backend refused the batch as malformed: moved aside (retried until it
        commits)."""
        await keep_trying(self._batches, "store the dead letter", self._batches.dead_letter,
                          batch_id, uplink, reason, uplinks)

    async def settle(self, uplinks: Sequence[str]) -> int:
        """Delete the batches every uplink in `uplinks` has (Batches.settle)."""
        return await self._batches.call(self._batches.settle, uplinks)
