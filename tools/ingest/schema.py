"""The operation centre's tables in PostgreSQL (docs/CITY_SCALE.md has the why of each).

records: one row per (node, seq), ever. The key is (node, seq), so `INSERT ... ON CONFLICT DO
NOTHING` is the dedup; indexes per node and kind, newest first, and per kind for the alarm view.
batches: one row per Idempotency-Key (the HTTP batch id, or an MQTT part `<id>.<kind>`) with
the answer it got, so a replay is answered without storing twice.
Views: latest_water_level (the newest level per water node) and recent_alarms (alarm records of
the last hour, and every role's PRIORITY records of that hour).

TimescaleDB: when the extension is installed in the database, records is created as a
hypertable on t (chunks by day); its unique key then has to include t, so it is
(node, seq, t). A record's t never changes between retries (the gateway stores it once), so
dedup is the same. Retention is the operator's: `SELECT drop_chunks('records', INTERVAL
'400 days')` with TimescaleDB, or a DELETE by t (docs/CITY_SCALE.md).
"""

from __future__ import annotations

# Bumped when the DDL changes in a way an existing database must be migrated for.
SCHEMA_VERSION = 1

TABLES = """
CREATE TABLE IF NOT EXISTS ingest_meta (
    name text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id text PRIMARY KEY,               -- Idempotency-Key: the batch id (MQTT: <id>.<kind>)
    gateway text NOT NULL,
    site text NOT NULL,
    created timestamptz NOT NULL,      -- when the gateway cut it
    received timestamptz NOT NULL DEFAULT now(),
    records integer NOT NULL,          -- records in the batch
    answer jsonb NOT NULL              -- what the first delivery was answered
);
CREATE INDEX IF NOT EXISTS batches_received ON batches (received);
"""

RECORDS = """
CREATE TABLE IF NOT EXISTS records (
    node text NOT NULL,
    seq bigint NOT NULL,
    t timestamptz NOT NULL,            -- the node's time (the gateway's when synced is false)
    kind text NOT NULL,                -- level, alarm, health, ... (PROTOCOL.md 2.1)
    role text NOT NULL,
    synced boolean NOT NULL,
    priority boolean NOT NULL,
    data jsonb NOT NULL,               -- the record's body by field name (level_cm, ...)
    site text NOT NULL,
    gateway text NOT NULL,
    batch text NOT NULL,               -- the batch that stored it first
    received timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY ({key})
);
CREATE INDEX IF NOT EXISTS records_node_kind_t ON records (node, kind, t DESC);
CREATE INDEX IF NOT EXISTS records_kind_t ON records (kind, t DESC);
CREATE INDEX IF NOT EXISTS records_priority_t ON records (t DESC) WHERE priority;
"""

VIEWS = """
CREATE OR REPLACE VIEW latest_water_level AS
SELECT DISTINCT ON (node)
       node, site, t, (data->>'level_cm')::double precision AS level_cm, seq, received
  FROM records
 WHERE role = 'water' AND kind = 'level'
 ORDER BY node, t DESC, seq DESC;

CREATE OR REPLACE VIEW recent_alarms AS
SELECT node, site, role, kind, seq, t, priority, data, received
  FROM records
 WHERE t > now() - interval '1 hour' AND (kind = 'alarm' OR priority)
 ORDER BY t DESC;
"""

HAS_TIMESCALE = "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"
HYPERTABLE = ("SELECT create_hypertable('records', 't', chunk_time_interval => INTERVAL"
              " '1 day', if_not_exists => TRUE, migrate_data => TRUE)")


def statements(timescale: bool) -> list[str]:
    """The DDL, in order, for a database with (timescale) or without TimescaleDB."""
    key = "node, seq, t" if timescale else "node, seq"
    text = TABLES + RECORDS.format(key=key)
    out = [s.strip() for s in text.split(";") if s.strip()]
    if timescale:
        out.append(HYPERTABLE)
    out += [s.strip() for s in VIEWS.split(";") if s.strip()]
    out.append(f"INSERT INTO ingest_meta VALUES ('schema_version', '{SCHEMA_VERSION}')"
               " ON CONFLICT (name) DO NOTHING")
    return out
