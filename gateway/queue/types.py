"""The queue's named values: what a store did, a cut batch, a node's bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


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


class Row(NamedTuple):
    """A record row on its way into a batch (node, seq, its budget `size`, its map `rec`)."""

    node: str
    seq: int
    size: int
    rec: bytes
