"""The gateway's durable queue: one SQLite file in WAL mode, one writer.

One concept per module: schema.py (the file's layout, its migration), types.py (the named
values), tx.py (a transaction), core.py (state and the mirror), writer.py (the writer thread
and the one hand-off to it), aio.py (the one async interface the event loop uses,
`Queue.aio`), intake.py (records in: a RECORDS payload decoded and validated, store, dedup,
ACK, eviction, backpressure), waiting.py (the waiting records in memory), runs.py (the records
in the file: one row per run of a node's contiguous seqs), batches.py (cut, delivery per
uplink, dead letters). The uplink wire format (a record's map, a batch's head) is
gateway/uplink_wire.py.

Records are committed before the session ACKs them, so an ACKed record survives a kill -9 and
a power cut. Per node we keep the contiguity point (the ACK value): every seq at or below it
is either still here or already delivered, so a resent record at or below it is a duplicate
even after its batch was delivered and deleted.

Only records at or below their node's ACK go into batches, and batches are delivered in the
order they were cut, which together keep each node's records in seq order at the backend: a
record stored beyond a gap waits until the gap is filled or declared gone (`from` rule).

A batch is cut once: its id (the Idempotency-Key) and CBOR body are stored with it, so every
retry, also after a restart, sends the same key and the same bytes.

Each record is stored with its uplink encoding (`rec`: the CBOR of its record map in a batch),
built once when it is stored, so cutting a batch concatenates stored bytes. A batch takes, per
node, every waiting record of a seq range (from the node's last cut up to some seq at or below
its ACK), so which records a batch holds follows from the node's cut point: nothing is written
to the record rows when a batch is cut, and a delivered batch deletes its records by seq range.
The batch row keeps its (node, seq) list for the uplinks and after a restart.
"""

from __future__ import annotations

from functools import cached_property

from .aio import AsyncQueue
from .batches import Batches
from .core import DEFAULT_MAX_BYTES, DEFAULT_MAX_DEPTH, GROUP_MAX, QueueBase
from .intake import Intake
from .schema import RECORD_OVERHEAD, SCHEMA_VERSION, SYNCHRONOUS
from .types import (
    REFUSED_JUMP,
    REFUSED_RESUME,
    Batch,
    Incoming,
    NodeInfo,
    Outcome,
    StoreResult,
)

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_DEPTH", "GROUP_MAX", "RECORD_OVERHEAD",
           "REFUSED_JUMP", "REFUSED_RESUME", "SCHEMA_VERSION", "SYNCHRONOUS", "AsyncQueue",
           "Batch", "Incoming", "NodeInfo", "Outcome", "Queue", "QueueBase",
           "StoreResult"]


class Queue(Intake, Batches):
    """The gateway's durable queue (the package's docstring): records in (Intake), batches
    out (Batches), on one SQLite file with one writer thread (writer.py); the event loop uses
    it through `aio`."""

    @cached_property
    def aio(self) -> AsyncQueue:
        """The one async interface in front of the queue (aio.py)."""
        return AsyncQueue(self, self, self._writer)
