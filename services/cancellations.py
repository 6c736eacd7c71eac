"""What inventory, payment and shipping remember of cancelled orders: a tombstone per order.

An ``OrderCancelled`` can overtake the saga it ends (the deadline fires while ``OrderCreated``
is still unpublished, and both go out together). Each service that takes a forward step keeps
the order ids it heard were cancelled, whatever the reason, and refuses later forward steps for
them, so a cancellation wins against a late step in every service.
"""

from __future__ import annotations

from datetime import datetime

from choreo.store.port import Transaction
from services.values import to_iso

TABLE = """CREATE TABLE IF NOT EXISTS cancelled_orders (
        order_id TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        cancelled_at TEXT NOT NULL
    )"""


async def remember_cancelled(tx: Transaction, order_id: str, reason: str, now: datetime) -> None:
    """The order's tombstone: kept once, whatever the number of OrderCancelled deliveries."""
    await tx.execute(
        "INSERT INTO cancelled_orders (order_id, reason, cancelled_at) VALUES (?, ?, ?)"
        " ON CONFLICT (order_id) DO NOTHING",
        (order_id, reason, to_iso(now)),
    )


async def is_cancelled(tx: Transaction, order_id: str) -> bool:
    row = await tx.fetchone("SELECT 1 FROM cancelled_orders WHERE order_id = ?", (order_id,))
    return row is not None
