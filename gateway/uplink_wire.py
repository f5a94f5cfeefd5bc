"""The uplink wire format, written once: a record's map and a batch's head, as CBOR bytes.

A batch (docs/PROTOCOL.md, the uplink) is the map {"batch", "gateway", "site", "created",
"records"}; each record of it is the map {"node", "seq", "t", "kind", "role", "synced",
"priority", "data"}, `data` being the record's body with named keys (protocol.data_names).
The queue encodes each record's map once, when it stores it (`RecordEncoder`), and a batch is
its head followed by the stored maps (`batch_body`): the same bytes as cbor2.dumps of the
whole batch as a dict, without building one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import cbor2

from . import protocol

# Cached (kind, body keys) -> uplink names of the body; bounded against odd nodes.
DATA_NAMES_MAX = 4096


def uint_head(major: int, n: int) -> bytes:
    """A CBOR head (major type + length) in shortest form, for splicing encoded items."""
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError(n)


# Encoded pieces of a record map (8 pairs, keys in this order).
_REC_NODE = b"\xa8" + cbor2.dumps("node")
_REC_SEQ, _REC_T, _REC_KIND, _REC_ROLE, _REC_SYNCED, _REC_PRIORITY, _REC_DATA = (
    cbor2.dumps(k) for k in ("seq", "t", "kind", "role", "synced", "priority", "data"))
_TRUE, _FALSE = cbor2.dumps(True), cbor2.dumps(False)
_KIND_ENC = {k: cbor2.dumps(name) for k, name in protocol.KIND_NAMES.items()}
# (synced, priority) -> the encoded pairs between `role`'s value and `data`'s value.
_FLAGS_ENC = {(sy, pr): b"".join((_REC_SYNCED, _TRUE if sy else _FALSE, _REC_PRIORITY,
                                  _TRUE if pr else _FALSE, _REC_DATA))
              for sy in (False, True) for pr in (False, True)}


class RecordEncoder:
    """Encodes record maps; keeps the CBOR of node ids and roles and the body names of each
    (kind, key set) it has seen (one per queue: the writer thread's)."""

    def __init__(self) -> None:
        self._texts: dict[str, bytes] = {}
        self._names: dict[tuple, tuple[tuple[int, str], ...]] = {}

    def text(self, s: str) -> bytes:
        enc = self._texts.get(s)
        if enc is None:
            enc = cbor2.dumps(s)
            if len(self._texts) < DATA_NAMES_MAX:
                self._texts[s] = enc
        return enc

    def data(self, kind: int, body: dict[int, Any]) -> bytes:
        """CBOR of the record's `data` map (protocol.body_to_data, encoded)."""
        names = self._names.get((kind, *body))
        if names is None:
            names = self._name(kind, body)
        return cbor2.dumps({name: body[k] for k, name in names})

    def _name(self, kind: int, body: dict[int, Any]) -> tuple[tuple[int, str], ...]:
        pairs = protocol.data_names(kind, body)
        if len(self._names) < DATA_NAMES_MAX:
            self._names[(kind, *body)] = pairs
        return pairs

    def record(self, node: str, seq: int, t: int, kind: int, role: str, synced: bool,
               priority: bool, data: bytes) -> bytes:
        """One record map from its fields (`data`: the CBOR of its `data` map)."""
        return encode_rec(self.text(node), seq, t, kind, self.text(role), synced, priority,
                          data)

    def records(self, node: str, role: str, records: Iterable[protocol.Record], after: int,
                now: float) -> list[tuple[int, int, int, bytes]]:
        """(seq, flags, bytes of `data`, record map) of each record beyond seq `after`: the
        store-time encoding (an unsynced record's `t` is the gateway's `now`)."""
        head = _REC_NODE + self.text(node) + _REC_SEQ
        role_part = _REC_ROLE + self.text(role)
        t_now = int(now)
        dumps = cbor2.dumps
        join = b"".join
        names_of = self._names
        out = []
        for r in records:
            seq = r.seq
            if seq <= after:
                continue
            kind, flags, body = r.kind, r.flags, r.body
            names = names_of.get((kind, *body))
            if names is None:
                names = self._name(kind, body)
            data = dumps({name: body[k] for k, name in names})
            unsynced = flags & protocol.FLAG_CLOCK_UNSYNCED
            out.append((seq, flags, len(data), join((
                head, dumps(seq), _REC_T, dumps(t_now if unsynced else r.t), _REC_KIND,
                _KIND_ENC.get(kind) or dumps(protocol.kind_name(kind)), role_part,
                _FLAGS_ENC[not unsynced, bool(flags & protocol.FLAG_PRIORITY)], data))))
        return out


def encode_rec(node_enc: bytes, seq: int, t: int, kind: int, role_enc: bytes, synced: bool,
               priority: bool, data: bytes) -> bytes:
    """The record map from encoded parts (`node_enc`, `role_enc`: CBOR texts; `data`: CBOR of
    the named body map)."""
    dumps = cbor2.dumps
    return b"".join((_REC_NODE, node_enc, _REC_SEQ, dumps(seq), _REC_T, dumps(t), _REC_KIND,
                     _KIND_ENC.get(kind) or dumps(protocol.kind_name(kind)), _REC_ROLE,
                     role_enc, _FLAGS_ENC[bool(synced), bool(priority)], data))


def batch_head(batch_id: str, gateway: str, site: str, created: int) -> bytes:
    """The batch map's pairs before the records array (its key included)."""
    return b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in (
        ("batch", batch_id), ("gateway", gateway), ("site", site),
        ("created", created))) + cbor2.dumps("records")


def batch_body(head: bytes, records: list[bytes], count: int | None = None) -> bytes:
    """The whole batch: its head (batch_head) and the encoded record maps; `count` says how
    many records `records` holds when an item is several maps concatenated."""
    n = len(records) if count is None else count
    return b"\xa5" + head + uint_head(4, n) + b"".join(records)


def batch_size(head: bytes) -> int:
    """The bytes of a batch with `head` and no records (the array head counted at its
    longest)."""
    return 1 + len(head) + 9
