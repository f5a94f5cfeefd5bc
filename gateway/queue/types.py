"""The queue's named values: what a store did, a cut batch, a node's bookkeeping, a message
handed to the writer thread and what became of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .. import protocol


class StoreResult(NamedTuple):
    """What one store() did; `ack` is the value to send in the node's ACK."""

    stored: int
    duplicates: int
    ack: int
    gaps: int = 0


@dataclass(frozen=True)
class Batch:
    id: str
    created: int
    keys: tuple[tuple[str, int], ...]   # (node, seq) in batch order
    body: bytes

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class NodeInfo:
    node: str
    ack: int
    role: str
    stored: int
    duplicates: int
    gaps: int
    last_seen: float


@dataclass(frozen=True, slots=True)
class Incoming:
    """A RECORDS payload as a node's session received it, handed whole to the writer thread
    (decoded, validated and stored there: Intake.store_messages)."""

    node: str                 # the session's node (identity bound by HELLO)
    role: str
    payload: bytes            # the message's CBOR, undecoded
    resume: int | None        # the session's resume point: RECORDS from below it not stored
    received: float           # wall time


class Outcome(NamedTuple):
    """What became of an Incoming: `message` as decoded; `result` when stored; else `refused`
    says why (REFUSED_RESUME, REFUSED_JUMP) or, both None, it was not a RECORDS message (the
    session handles it as any other). `ack` is the node's ACK after it."""

    message: protocol.Message
    result: StoreResult | None = None
    refused: str | None = None
    ack: int = 0


# Outcome.refused: seqs numbered by a lost counter (PROTOCOL.md 2.2 rule 7), from below the
# session's resume point; a `from` further beyond the ACK than any journal holds.
REFUSED_RESUME = "resume"
REFUSED_JUMP = "jump"
