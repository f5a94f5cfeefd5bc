"""PostgreSQL writes: one transaction per batch, exactly once by Idempotency-Key and (node, seq).

    store = await Store.open("postgresql://ingest@db/roadside")
    answer = await store.store_batch(batch)      # the JSON answer of PROTOCOL.md section 3
    await store.close()

The batch row goes first (`ON CONFLICT (id) DO NOTHING`): a key seen before stores nothing and
is answered as a duplicate; a key being stored by another process right now makes this
transaction wait for that one, then answers it as a duplicate (or stores it, if the other
rolled back). The records follow in one `INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO
NOTHING`: one statement and one round trip for the whole batch, whatever its size.

A database that is down or restarting raises StoreUnavailable: the HTTP side answers 503 and
the gateway retries; the MQTT side does not acknowledge the message, so the broker redelivers.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..errors import ToolError
from . import schema

log = logging.getLogger("roadside.ingest")

INSERT_BATCH = (
    "INSERT INTO batches (id, gateway, site, created, records, answer)"
    " VALUES (%s, %s, %s, to_timestamp(%s), %s, %s::jsonb)"
    " ON CONFLICT (id) DO NOTHING RETURNING id"
)
INSERT_RECORDS = (
    "INSERT INTO records (node, seq, t, kind, role, synced, priority, data, site, gateway,"
    " batch)"
    " SELECT r.node, r.seq, to_timestamp(r.t), r.kind, r.role, r.synced, r.priority,"
    " r.data::jsonb, %s, %s, %s"
    " FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::text[], %s::text[],"
    " %s::boolean[], %s::boolean[], %s::text[])"
    " AS r(node, seq, t, kind, role, synced, priority, data)"
    " ORDER BY r.node, r.seq"          # rows locked in one order: no deadlock between batches
    " ON CONFLICT DO NOTHING"
)
# Down, restarting, shutting down, out of connections (OperationalError and its kin), two
# batches sharing a record deadlocked (one is rolled back): the sender retries.
RETRYABLE = (psycopg.OperationalError, psycopg.errors.TransactionRollback, PoolTimeout)
SET_ANSWER = "UPDATE batches SET answer = %s::jsonb WHERE id = %s"


class StoreUnavailable(ToolError):
    """PostgreSQL cannot be reached or failed mid-transaction; nothing was committed."""


def answer(batch_id: str, duplicate_batch: bool, stored: int, duplicates: int) -> dict[str, Any]:
    """The reference receiver's answer (tools/sim/receiver.py), field for field."""
    return {"batch": batch_id, "duplicate_batch": duplicate_batch, "stored": stored,
            "duplicate_records": duplicates}


async def init_db(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Create what is missing (idempotent; one transaction); True when TimescaleDB is used."""
    async with conn.transaction():
        # Two processes starting at once must not race on CREATE ... IF NOT EXISTS.
        await conn.execute("SELECT pg_advisory_xact_lock(7152015)")
        timescale = bool(await (await conn.execute(schema.HAS_TIMESCALE)).fetchone())
        for stmt in schema.statements(timescale):
            await conn.execute(stmt.encode())   # our own constant DDL (not a literal: bytes)
        row = await (await conn.execute(
            "SELECT value FROM ingest_meta WHERE name = 'schema_version'")).fetchone()
    if row is not None and int(row[0]) > schema.SCHEMA_VERSION:
        raise ToolError(f"the database's schema is version {row[0]}, newer than this roadside"
                        f" ingest's ({schema.SCHEMA_VERSION}): run the roadside version that"
                        " created it, or a newer one")
    return timescale


class Store:
    """A small pool of connections to one database; stateless apart from counters."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self.batches = 0              # stored by this process
        self.records = 0
        self.duplicate_batches = 0
        self.duplicate_records = 0
        self.unavailable = 0          # batches refused because the database failed

    @classmethod
    async def open(cls, url: str, *, size: int = 4, init: bool = True,
                   timeout: float = 10.0, wait: float = 2.0) -> Store:
        """`timeout` bounds the first connection; `wait` how long a batch waits for a
        connection before it is answered 503 (shorter than the gateway's uplink timeout_s,
        so the gateway hears why)."""
        try:   # one plain connection first: a wrong URL fails at once, in one line
            conn = await psycopg.AsyncConnection.connect(url, connect_timeout=int(timeout))
            await conn.close()
        except psycopg.Error as exc:
            raise ToolError(f"cannot connect to {redact(url)}: {first_line(exc)}; is PostgreSQL"
                            " running, and the URL's host, port, user, password and database"
                            " right?") from exc
        pool = AsyncConnectionPool(url, min_size=1, max_size=size, open=False,
                                   check=AsyncConnectionPool.check_connection,
                                   kwargs={"autocommit": True}, timeout=wait)
        await pool.open(wait=True, timeout=timeout)
        store = cls(pool)
        if init:
            async with pool.connection() as conn:
                await init_db(conn)
        return store

    async def close(self) -> None:
        await self.pool.close()

    async def store_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Write a validated batch in one transaction; return its answer."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                result = await self._store(conn, batch)
        except RETRYABLE as exc:
            self.unavailable += 1
            raise StoreUnavailable(f"PostgreSQL unavailable: {first_line(exc)}") from exc
        # counted once committed
        if result["duplicate_batch"]:
            self.duplicate_batches += 1
        else:
            self.batches += 1
            self.records += result["stored"]
            self.duplicate_records += result["duplicate_records"]
        return result

    async def _store(self, conn: psycopg.AsyncConnection[Any],
                     batch: dict[str, Any]) -> dict[str, Any]:
        bid, records = batch["batch"], batch["records"]
        pending = json.dumps(answer(bid, False, 0, 0))
        cur = await conn.execute(INSERT_BATCH, (bid, batch["gateway"], batch["site"],
                                                batch["created"], len(records), pending))
        if await cur.fetchone() is None:
            return answer(bid, True, 0, 0)
        stored = 0
        if records:
            cur = await conn.execute(INSERT_RECORDS, (
                batch["site"], batch["gateway"], bid,
                [r["node"] for r in records], [r["seq"] for r in records],
                [r["t"] for r in records], [r["kind"] for r in records],
                [r["role"] for r in records], [r["synced"] for r in records],
                [r["priority"] for r in records],
                [json.dumps(r["data"], sort_keys=True) for r in records]))
            stored = cur.rowcount
        result = answer(bid, False, stored, len(records) - stored)
        if result != json.loads(pending):
            await conn.execute(SET_ANSWER, (json.dumps(result), bid))
        return result

    def counters(self) -> dict[str, int]:
        return {"batches": self.batches, "records": self.records,
                "duplicate_batches": self.duplicate_batches,
                "duplicate_records": self.duplicate_records, "unavailable": self.unavailable}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
