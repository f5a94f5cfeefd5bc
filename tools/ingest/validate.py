"""Fast validation of an uplink batch: the CDDL rules `uplink-batch` / `uplink-record` of
docs/protocol.cddl written out as plain Python checks over what cbor2 decoded.

The reference receiver validates with zcbor's Python validator (tools/sim/cddl.py), a few
hundred records per second; this is the same judgement at well over a hundred times that
(docs/PERFORMANCE.md). tests/tools/test_ingest_validate.py holds both to the same verdict on
valid batches and on every way of breaking one, so the CDDL stays the one contract.
"""

from __future__ import annotations

from typing import Any

import cbor2

from ..errors import ToolError

BATCH_KEYS = ("batch", "gateway", "site", "created", "records")
RECORD_KEYS = ("node", "seq", "t", "kind", "role", "synced", "priority", "data")
_TEXT = ("node", "kind", "role")
_UINT = ("seq", "t")
_BOOL = ("synced", "priority")


class BadBatch(ToolError):
    """A body that is not a valid batch; answered 400 with this one line."""


def decode(body: bytes | bytearray) -> Any:
    try:
        return cbor2.loads(body)
    except Exception as exc:  # cbor2 raises several types on garbage
        raise BadBatch(f"body is not one CBOR item: {exc}") from exc


# PostgreSQL's bigint holds seq and t; a uint beyond it is refused (no node counts that far).
MAX_UINT = (1 << 63) - 1


def _uint(v: Any) -> bool:
    return type(v) is int and 0 <= v <= MAX_UINT


def _keys(obj: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(obj, dict):
        raise BadBatch(f"does not match CDDL rule 'uplink-batch': {where} is not a map")
    if len(obj) != len(keys) or any(k not in obj for k in keys):
        missing = [k for k in keys if k not in obj]
        extra = [repr(k) for k in obj if k not in keys]
        what = (f"missing {', '.join(missing)}" if missing else "") + (
            ("; " if missing and extra else "") + (f"unknown {', '.join(extra)}" if extra else ""))
        raise BadBatch(f"does not match CDDL rule 'uplink-batch': {where}: {what}")


def check_batch(obj: Any) -> dict[str, Any]:
    """`obj` (decoded CBOR) as a valid uplink batch, or BadBatch saying what is wrong."""
    _keys(obj, BATCH_KEYS, "the batch")
    for k in ("batch", "gateway", "site"):
        if type(obj[k]) is not str:
            raise BadBatch(f"does not match CDDL rule 'uplink-batch': {k} must be text")
    if not _uint(obj["created"]):
        raise BadBatch("does not match CDDL rule 'uplink-batch': created must be a uint")
    records = obj["records"]
    if type(records) is not list:
        raise BadBatch("does not match CDDL rule 'uplink-batch': records must be an array")
    for i, r in enumerate(records):
        where = f"records[{i}]"
        _keys(r, RECORD_KEYS, where)
        for k in _TEXT:
            if type(r[k]) is not str:
                raise BadBatch(f"does not match CDDL rule 'uplink-batch': {where}.{k} must"
                               " be text")
        for k in _UINT:
            if not _uint(r[k]):
                raise BadBatch(f"does not match CDDL rule 'uplink-batch': {where}.{k} must"
                               " be a uint below 2**63")
        for k in _BOOL:
            if type(r[k]) is not bool:
                raise BadBatch(f"does not match CDDL rule 'uplink-batch': {where}.{k} must"
                               " be a bool")
        data = r["data"]
        if type(data) is not dict:
            raise BadBatch(f"does not match CDDL rule 'uplink-batch': {where}.data must be a"
                           " map")
        for k, v in data.items():
            if type(k) is not str or type(v) not in (int, float, str, bool):
                raise BadBatch(f"does not match CDDL rule 'uplink-batch': {where}.data"
                               f"[{k!r}] must be text => number / text / bool")
    return obj


def check_key(batch: dict[str, Any], key: str | None) -> None:
    """The Idempotency-Key header, when sent, must be the batch id (PROTOCOL.md section 3)."""
    if key is not None and key != batch["batch"]:
        raise BadBatch(
            f"Idempotency-Key header {key!r} differs from the batch id {batch['batch']!r}"
        )


def check_seq_order(batch: dict[str, Any]) -> None:
    """Within a batch, a node's records are in seq order (PROTOCOL.md section 3)."""
    last: dict[str, int] = {}
    for i, record in enumerate(batch["records"]):
        node, seq = record["node"], record["seq"]
        if node in last and seq <= last[node]:
            raise BadBatch(
                f"records[{i}]: node {node!r} seq {seq} is not after seq {last[node]}"
                " in the same batch; a node's records must be in seq order"
            )
        last[node] = seq


def parse(body: bytes, key: str | None) -> dict[str, Any]:
    """A POST body and its Idempotency-Key header as a valid batch, or BadBatch."""
    batch = check_batch(decode(body))
    check_key(batch, key)
    check_seq_order(batch)
    return batch
