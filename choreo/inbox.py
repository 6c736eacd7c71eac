"""The transactional inbox and per-aggregate positions (all inside the caller's transaction)."""

from __future__ import annotations

import time

from choreo.store.port import Transaction


async def already_handled(tx: Transaction, consumer: str, event_id: str) -> bool:
    row = await tx.fetchone(
        "SELECT 1 FROM choreo_inbox WHERE consumer = ? AND event_id = ?", (consumer, event_id)
    )
    return row is not None


# Parameters: consumer, event id, handled at (epoch seconds).
RECORD_HANDLED_SQL = (
    "INSERT INTO choreo_inbox (consumer, event_id, handled_at) VALUES (?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)


async def record_handled(tx: Transaction, consumer: str, event_id: str) -> bool:
    """Record the event as handled; False when it already was (a unique-key clash)."""
    inserted = await tx.execute(RECORD_HANDLED_SQL, (consumer, event_id, time.time()))
    return inserted == 1


async def position(tx: Transaction, consumer: str, aggregate_type: str, aggregate_id: str) -> int:
    row = await tx.fetchone(
        "SELECT version FROM choreo_positions"
        " WHERE consumer = ? AND aggregate_type = ? AND aggregate_id = ?",
        (consumer, aggregate_type, aggregate_id),
    )
    return int(row[0]) if row else 0


async def advance(
    tx: Transaction, consumer: str, aggregate_type: str, aggregate_id: str, version: int
) -> None:
    await tx.execute(
        "INSERT INTO choreo_positions (consumer, aggregate_type, aggregate_id, version, updated_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (consumer, aggregate_type, aggregate_id)"
        " DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
        (consumer, aggregate_type, aggregate_id, version, time.time()),
    )


async def prune(tx: Transaction, older_than_s: float) -> int:
    """Forget what the stream has forgotten: rows older than the stream's ``max_age``.

    A redelivery can only come from the stream, so an inbox row outliving every message it
    could match is dead weight; a shorter retention would let an old event apply twice.
    """
    cutoff = time.time() - older_than_s
    removed = await tx.execute("DELETE FROM choreo_inbox WHERE handled_at < ?", (cutoff,))
    removed += await tx.execute("DELETE FROM choreo_positions WHERE updated_at < ?", (cutoff,))
    return removed
