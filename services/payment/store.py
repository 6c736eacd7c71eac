"""Payment tables and queries: one payment row per order, refunded in place."""

from __future__ import annotations

from datetime import datetime

from choreo.store.port import Row, Transaction
from services import cancellations

# Re-exported: the handlers read every query of the service through its store.
from services.cancellations import is_cancelled as is_cancelled
from services.cancellations import remember_cancelled as remember_cancelled
from services.paging import KeysetQuery, fetch_page
from services.payment.domain import Payment, PaymentStatus
from services.values import Money, to_iso

SCHEMA: list[str] = [
    """CREATE TABLE IF NOT EXISTS payments (
        order_id TEXT PRIMARY KEY,
        payment_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        amount_minor BIGINT NOT NULL,
        currency TEXT NOT NULL,
        status TEXT NOT NULL,
        charge_id TEXT NOT NULL,
        failure_reason TEXT NOT NULL,
        refund_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS payments_by_customer ON payments (customer_id, order_id)",
    # Orders this service heard were cancelled (any reason): a late or replayed
    # InventoryReserved for one charges nothing, so a cancellation wins against a late step.
    cancellations.TABLE,
]

_COLUMNS = (
    "order_id, payment_id, customer_id, amount_minor, currency, status, charge_id,"
    " failure_reason, refund_id"
)


def _payment(row: Row) -> Payment:
    order_id, payment_id, customer_id, amount, currency, status, charge_id, reason, refund = row
    return Payment(
        order_id,
        payment_id,
        customer_id,
        Money(int(amount), currency),
        PaymentStatus(status),
        charge_id,
        reason,
        refund,
    )


async def insert_payment(tx: Transaction, payment: Payment, now: datetime) -> bool:
    """False when the order already has a payment: the first recorded answer stands."""
    p = payment
    inserted = await tx.execute(
        f"INSERT INTO payments ({_COLUMNS}, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (order_id) DO NOTHING",
        (
            p.order_id,
            p.payment_id,
            p.customer_id,
            p.amount.amount_minor,
            p.amount.currency,
            p.status.value,
            p.charge_id,
            p.failure_reason,
            p.refund_id,
            to_iso(now),
            to_iso(now),
        ),
    )
    return inserted == 1


async def load_payment(tx: Transaction, order_id: str) -> Payment | None:
    row = await tx.fetchone(f"SELECT {_COLUMNS} FROM payments WHERE order_id = ?", (order_id,))
    return _payment(row) if row else None


async def mark_refunded(tx: Transaction, order_id: str, refund_id: str, now: datetime) -> bool:
    """Compare-and-set from COMPLETED, so a refund is recorded once however often it is asked."""
    changed = await tx.execute(
        "UPDATE payments SET status = ?, refund_id = ?, updated_at = ?"
        " WHERE order_id = ? AND status = ?",
        (
            PaymentStatus.REFUNDED.value,
            refund_id,
            to_iso(now),
            order_id,
            PaymentStatus.COMPLETED.value,
        ),
    )
    return changed == 1


async def list_payments(
    tx: Transaction, customer_id: str | None = None, limit: int = 100
) -> list[Payment]:
    if customer_id is None:
        rows = await tx.fetchall(
            f"SELECT {_COLUMNS} FROM payments ORDER BY order_id LIMIT ?", (limit,)
        )
    else:
        rows = await tx.fetchall(
            f"SELECT {_COLUMNS} FROM payments WHERE customer_id = ? ORDER BY order_id LIMIT ?",
            (customer_id, limit),
        )
    return [_payment(row) for row in rows]


_PAYMENT_PAGES = KeysetQuery(
    rpc="ListPayments",
    table="payments",
    select=f"{_COLUMNS}, created_at",
    keys=("created_at", "order_id"),
    key_of=lambda row: (str(row[-1]), str(row[0])),
    descending=True,
)


async def page_of_payments(
    tx: Transaction, page_size: int, page_token: str
) -> tuple[list[Payment], str]:
    """A page of payments, newest first, and the next page's token ('' on the last)."""
    rows, token = await fetch_page(tx, _PAYMENT_PAGES, page_size, page_token)
    return [_payment(row[:-1]) for row in rows], token
