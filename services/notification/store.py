"""Notification tables and queries; the unique (order_id, kind) makes sending once structural."""

from __future__ import annotations

from datetime import datetime

from choreo.store.port import Row, Transaction
from services.notification.domain import Channel, Notification, NotificationKind
from services.values import to_iso

SCHEMA: list[str] = [
    """CREATE TABLE IF NOT EXISTS notifications (
        notification_id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        channel TEXT NOT NULL,
        message TEXT NOT NULL,
        sent_at TEXT NOT NULL,
        UNIQUE (order_id, kind)
    )""",
    "CREATE INDEX IF NOT EXISTS notifications_by_customer"
    " ON notifications (customer_id, sent_at, notification_id)",
]

_COLUMNS = "notification_id, order_id, customer_id, kind, channel, message"


def _notification(row: Row) -> Notification:
    notification_id, order_id, customer_id, kind, channel, message = row
    return Notification(
        notification_id, order_id, customer_id, NotificationKind(kind), Channel(channel), message
    )


async def record_notification(tx: Transaction, notification: Notification, now: datetime) -> bool:
    """False when this order already got this kind of notification: do not send it again."""
    n = notification
    inserted = await tx.execute(
        f"INSERT INTO notifications ({_COLUMNS}, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (
            n.notification_id,
            n.order_id,
            n.customer_id,
            n.kind.value,
            n.channel.value,
            n.message,
            to_iso(now),
        ),
    )
    return inserted == 1


async def notifications_for(tx: Transaction, order_id: str) -> list[Notification]:
    rows = await tx.fetchall(
        f"SELECT {_COLUMNS} FROM notifications WHERE order_id = ? ORDER BY kind", (order_id,)
    )
    return [_notification(row) for row in rows]


async def counts_per_order(tx: Transaction) -> dict[tuple[str, str], int]:
    """(order_id, kind) -> count; anything above 1 breaks invariant 4."""
    rows = await tx.fetchall("SELECT order_id, kind, COUNT(*) FROM notifications GROUP BY 1, 2")
    return {(order_id, kind): int(n) for order_id, kind, n in rows}


async def list_notifications(
    tx: Transaction,
    *,
    order_id: str = "",
    customer_id: str = "",
    limit: int,
    after: tuple[str, str] | None = None,
) -> list[tuple[Notification, str]]:
    """Notifications with their ``sent_at``, newest first, filtered by order and/or customer
    when given (none given: the most recent of all).

    Paged by the key ``(sent_at, notification_id)`` of the last row of the previous page, so a
    notification sent while a client pages is neither skipped nor repeated.
    """
    where, params = [], []
    if order_id:
        where.append("order_id = ?")
        params.append(order_id)
    if customer_id:
        where.append("customer_id = ?")
        params.append(customer_id)
    if after is not None:
        where.append("(sent_at < ? OR (sent_at = ? AND notification_id < ?))")
        params += [after[0], after[0], after[1]]
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = await tx.fetchall(
        f"SELECT {_COLUMNS}, sent_at FROM notifications{clause}"
        " ORDER BY sent_at DESC, notification_id DESC LIMIT ?",
        [*params, limit],
    )
    return [(_notification(row[:-1]), str(row[-1])) for row in rows]
