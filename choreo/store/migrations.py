"""Versioned schema: each DDL statement is applied once per database and recorded.

A service's schema is a list of statements (the runtime's tables, then the service's own). The
first start applies them all; a later start applies only the statements it has not recorded
yet, in list order, so a release adds a table or a column by appending a statement (an
``ALTER TABLE ... ADD COLUMN`` runs exactly once, although it is not idempotent itself). A
statement is known by the hash of its text with whitespace collapsed, so re-indenting it does
not run it again. The ``IF NOT EXISTS`` in every ``CREATE`` keeps databases created before this
table existed working: their statements run once more, harmlessly, and are recorded.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from choreo.store.port import Transaction

MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS choreo_schema_migrations (
    checksum TEXT PRIMARY KEY,
    statement TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL)"""


def checksum(statement: str) -> str:
    return hashlib.sha256(" ".join(statement.split()).encode()).hexdigest()


async def apply_versioned(tx: Transaction, statements: Sequence[str]) -> int:
    """Apply the statements not yet recorded in this database; returns how many ran.

    The caller holds the transaction (and, on Postgres, a lock that serialises replicas), so a
    failing statement leaves nothing half-applied or half-recorded.
    """
    await tx.execute(MIGRATIONS_TABLE)
    rows = await tx.fetchall("SELECT checksum FROM choreo_schema_migrations")
    applied = {str(row[0]) for row in rows}
    ran = 0
    for statement in statements:
        key = checksum(statement)
        if key in applied:
            continue
        await tx.execute(statement)
        await tx.execute(
            "INSERT INTO choreo_schema_migrations (checksum, statement, applied_at)"
            " VALUES (?, ?, ?)",
            (key, statement, time.time()),
        )
        applied.add(key)
        ran += 1
    return ran
