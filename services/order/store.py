"""Order tables and queries: the order row, its status history (for WatchOrder) and paging."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from choreo.store.port import Row, Transaction
from services.order.domain import CancellationReason, Order, OrderStatus
from services.values import Address, Line, Money, from_iso, to_iso

SCHEMA: list[str] = [
    """CREATE TABLE IF NOT EXISTS orders (
        order_id TEXT PRIMARY KEY,
        idempotency_key TEXT NOT NULL UNIQUE,
        request_fingerprint TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        status TEXT NOT NULL,
        lines_json TEXT NOT NULL,
        total_minor BIGINT NOT NULL,
        currency TEXT NOT NULL,
        shipping_address_json TEXT NOT NULL,
        cancellation_reason TEXT NOT NULL,
        cancellation_detail TEXT NOT NULL,
        customer_notified INTEGER NOT NULL,
        payment_id TEXT NOT NULL,
        shipment_id TEXT NOT NULL,
        tracking_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS orders_by_created ON orders (created_at, order_id)",
    # The saga deadline scans the orders that are not final yet, oldest first.
    "CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status, created_at)",
    """CREATE TABLE IF NOT EXISTS order_history (
        order_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        status TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (order_id, seq)
    )""",
]

_COLUMNS = (
    "order_id, idempotency_key, request_fingerprint, customer_id, status, lines_json,"
    " total_minor, currency, shipping_address_json, cancellation_reason, cancellation_detail,"
    " customer_notified, payment_id, shipment_id, tracking_id, correlation_id,"
    " created_at, updated_at"
)


class InvalidPageToken(ValueError):
    """The page token was not one we handed out (an INVALID_ARGUMENT for the caller)."""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    seq: int
    status: OrderStatus
    at: datetime


@dataclass(frozen=True, slots=True)
class OrderPage:
    orders: list[Order]
    next_page_token: str  # empty on the last page


def _values(o: Order) -> tuple[object, ...]:
    lines = [
        {"sku": ln.sku, "quantity": ln.quantity, "unit_price_minor": ln.unit_price.amount_minor}
        for ln in o.lines
    ]
    return (
        o.order_id,
        o.idempotency_key,
        o.request_fingerprint,
        o.customer_id,
        o.status.value,
        json.dumps(lines),
        o.total.amount_minor,
        o.total.currency,
        json.dumps(o.shipping_address.as_dict()),
        o.cancellation_reason.value if o.cancellation_reason else "",
        o.cancellation_detail,
        int(o.customer_notified),
        o.payment_id,
        o.shipment_id,
        o.tracking_id,
        o.correlation_id,
        to_iso(o.created_at),
        to_iso(o.updated_at),
    )


def _order(row: Row) -> Order:
    (
        order_id,
        key,
        fingerprint,
        customer_id,
        status,
        lines_json,
        total,
        currency,
        address,
        reason,
        detail,
        notified,
        payment_id,
        shipment_id,
        tracking_id,
        correlation_id,
        created_at,
        updated_at,
    ) = row
    lines = tuple(
        Line(d["sku"], d["quantity"], Money(d["unit_price_minor"], currency))
        for d in json.loads(lines_json)
    )
    return Order(
        order_id,
        key,
        fingerprint,
        customer_id,
        OrderStatus(status),
        lines,
        Money(int(total), currency),
        Address(**json.loads(address)),
        from_iso(created_at),
        from_iso(updated_at),
        correlation_id,
        CancellationReason(reason) if reason else None,
        detail,
        bool(notified),
        payment_id,
        shipment_id,
        tracking_id,
    )


async def insert_order(tx: Transaction, order: Order) -> bool:
    """False when the order id or idempotency key exists: the caller reloads and replays."""
    marks = ", ".join("?" for _ in range(18))
    inserted = await tx.execute(
        f"INSERT INTO orders ({_COLUMNS}) VALUES ({marks}) ON CONFLICT DO NOTHING", _values(order)
    )
    if inserted:
        await _append_history(tx, order)
    return inserted == 1


async def save_order(
    tx: Transaction, before: Order, after: Order, via: Sequence[OrderStatus] = ()
) -> bool:
    """Write a transition; the guard refuses it if another writer changed the order first.

    ``via``: statuses the order passed through on the way to ``after``'s (a confirmation that
    a shipment's outcome caught up), recorded in the history before it, so WatchOrder shows
    every step.

    The guard covers every field a transition can change, not only the status: under Postgres'
    read committed, a status-only guard would let a ship decided on a stale row overwrite a
    concurrent ``customer_notified`` (a lost update)."""
    changed = await tx.execute(
        "UPDATE orders SET status = ?, cancellation_reason = ?, cancellation_detail = ?,"
        " customer_notified = ?, payment_id = ?, shipment_id = ?, tracking_id = ?, updated_at = ?"
        " WHERE order_id = ? AND status = ? AND customer_notified = ? AND payment_id = ?"
        " AND shipment_id = ?",
        (
            after.status.value,
            after.cancellation_reason.value if after.cancellation_reason else "",
            after.cancellation_detail,
            int(after.customer_notified),
            after.payment_id,
            after.shipment_id,
            after.tracking_id,
            to_iso(after.updated_at),
            before.order_id,
            before.status.value,
            int(before.customer_notified),
            before.payment_id,
            before.shipment_id,
        ),
    )
    if changed and after.status is not before.status:
        for status in via:
            if status is not after.status:
                await _append_history(tx, replace(after, status=status))
        await _append_history(tx, after)
    return changed == 1


async def _append_history(tx: Transaction, order: Order) -> None:
    await tx.execute(
        "INSERT INTO order_history (order_id, seq, status, at)"
        " SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ? FROM order_history WHERE order_id = ?",
        (order.order_id, order.status.value, to_iso(order.updated_at), order.order_id),
    )


async def load_order(tx: Transaction, order_id: str) -> Order | None:
    row = await tx.fetchone(f"SELECT {_COLUMNS} FROM orders WHERE order_id = ?", (order_id,))
    return _order(row) if row else None


async def load_order_by_key(tx: Transaction, idempotency_key: str) -> Order | None:
    row = await tx.fetchone(
        f"SELECT {_COLUMNS} FROM orders WHERE idempotency_key = ?", (idempotency_key,)
    )
    return _order(row) if row else None


async def overdue_order_ids(tx: Transaction, placed_before: datetime, limit: int) -> list[str]:
    """Orders not final yet (PENDING or CONFIRMED) placed before ``placed_before``, oldest
    first: the saga deadline's candidates."""
    rows = await tx.fetchall(
        "SELECT order_id FROM orders WHERE status IN (?, ?) AND created_at < ?"
        " ORDER BY created_at LIMIT ?",
        (
            OrderStatus.PENDING.value,
            OrderStatus.CONFIRMED.value,
            to_iso(placed_before),
            limit,
        ),
    )
    return [str(row[0]) for row in rows]


async def history(tx: Transaction, order_id: str, after_seq: int = 0) -> list[HistoryEntry]:
    rows = await tx.fetchall(
        "SELECT seq, status, at FROM order_history WHERE order_id = ? AND seq > ? ORDER BY seq",
        (order_id, after_seq),
    )
    return [HistoryEntry(int(seq), OrderStatus(status), from_iso(at)) for seq, status, at in rows]


async def list_orders(
    tx: Transaction,
    page_size: int = 50,
    page_token: str = "",
    customer_id: str | None = None,
    status: OrderStatus | None = None,
    newest_first: bool = False,
) -> OrderPage:
    """Orders keyset-paged, oldest first unless ``newest_first``: a token is the last
    (created_at, order_id) seen, so it stays valid while new orders arrive."""
    conditions: list[str] = []
    params: list[object] = []
    if page_token:
        after_created, after_id = _decode_token(page_token)
        cmp = "<" if newest_first else ">"
        conditions.append(f"(created_at {cmp} ? OR (created_at = ? AND order_id {cmp} ?))")
        params += [after_created, after_created, after_id]
    if customer_id is not None:
        conditions.append("customer_id = ?")
        params.append(customer_id)
    if status is not None:
        conditions.append("status = ?")
        params.append(status.value)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    direction = "DESC" if newest_first else "ASC"
    rows = await tx.fetchall(
        f"SELECT {_COLUMNS} FROM orders {where}"
        f" ORDER BY created_at {direction}, order_id {direction} LIMIT ?",
        (*params, page_size + 1),
    )
    orders = [_order(row) for row in rows[:page_size]]
    more = len(rows) > page_size
    token = _encode_token(to_iso(orders[-1].created_at), orders[-1].order_id) if more else ""
    return OrderPage(orders, token)


def _encode_token(created_at: str, order_id: str) -> str:
    raw = json.dumps([created_at, order_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_token(token: str) -> tuple[str, str]:
    try:
        created_at, order_id = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidPageToken("page_token is not a token returned by ListOrders") from exc
    if not isinstance(created_at, str) or not isinstance(order_id, str):
        raise InvalidPageToken("page_token is not a token returned by ListOrders")
    return created_at, order_id
