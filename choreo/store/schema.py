"""The runtime's own tables, created in every service's database next to its state.

- ``choreo_inbox``: ids of handled events (per consumer), written in the handler's transaction.
- ``choreo_outbox``: events to publish, written in that same transaction; the relay deletes a
  row once the broker has acknowledged it.
- ``choreo_outbox_parked``: outbox rows the relay can never publish (too large for the broker,
  or refused for good), moved here with their reason; see ``choreo.dlq``.
- ``choreo_aggregate_versions``: the last version this service emitted for each aggregate.
- ``choreo_positions``: the last version each ordered consumer applied for each aggregate.
"""

from __future__ import annotations


def runtime_schema(dialect: str) -> list[str]:
    # SQLite: a plain INTEGER PRIMARY KEY still grows past every row present (the sweep's
    # order), without AUTOINCREMENT's extra write to sqlite_sequence on every insert.
    serial = "INTEGER PRIMARY KEY" if dialect == "sqlite" else "BIGSERIAL PRIMARY KEY"
    blob = "BLOB" if dialect == "sqlite" else "BYTEA"
    # Keyed tables clustered on their key: one B-tree to write per insert instead of two.
    without_rowid = " WITHOUT ROWID" if dialect == "sqlite" else ""
    return [
        f"""CREATE TABLE IF NOT EXISTS choreo_inbox (
            consumer TEXT NOT NULL,
            event_id TEXT NOT NULL,
            handled_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (consumer, event_id)){without_rowid}""",
        "CREATE INDEX IF NOT EXISTS choreo_inbox_age ON choreo_inbox (handled_at)",
        f"""CREATE TABLE IF NOT EXISTS choreo_outbox (
            seq {serial},
            event_id TEXT NOT NULL UNIQUE,
            subject TEXT NOT NULL,
            headers TEXT NOT NULL,
            body {blob} NOT NULL,
            created_at DOUBLE PRECISION NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS choreo_outbox_parked (
            seq {serial},
            event_id TEXT NOT NULL UNIQUE,
            subject TEXT NOT NULL,
            headers TEXT NOT NULL,
            body {blob} NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            parked_at DOUBLE PRECISION NOT NULL,
            service TEXT NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            notice_filed INTEGER NOT NULL DEFAULT 0)""",
        f"""CREATE TABLE IF NOT EXISTS choreo_aggregate_versions (
            aggregate_type TEXT NOT NULL,
            aggregate_id TEXT NOT NULL,
            version BIGINT NOT NULL,
            PRIMARY KEY (aggregate_type, aggregate_id)){without_rowid}""",
        f"""CREATE TABLE IF NOT EXISTS choreo_positions (
            consumer TEXT NOT NULL,
            aggregate_type TEXT NOT NULL,
            aggregate_id TEXT NOT NULL,
            version BIGINT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (consumer, aggregate_type, aggregate_id)){without_rowid}""",
    ]
