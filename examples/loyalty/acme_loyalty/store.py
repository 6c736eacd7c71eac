"""Loyalty tables in the service's own database (SQLite or Postgres, through choreo.store).

Handlers run inside the runtime's transaction, with the inbox record and the outbox rows, so a
balance change and the event that announces it commit together, once.
"""

from __future__ import annotations

from acme_loyalty.domain import OrderPoints, Status
from choreo.store.port import Transaction

SCHEMA: list[str] = [
    """CREATE TABLE IF NOT EXISTS loyalty_orders (
        order_id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        points BIGINT NOT NULL,
        status TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS loyalty_accounts (
        customer_id TEXT PRIMARY KEY,
        balance BIGINT NOT NULL
    )""",
]


async def order_points(tx: Transaction, order_id: str) -> OrderPoints | None:
    row = await tx.fetchone(
        "SELECT order_id, customer_id, points, status FROM loyalty_orders WHERE order_id = ?",
        (order_id,),
    )
    if row is None:
        return None
    return OrderPoints(str(row[0]), str(row[1]), int(row[2]), Status(row[3]))


async def save_order_points(tx: Transaction, points: OrderPoints) -> None:
    await tx.execute(
        "INSERT INTO loyalty_orders (order_id, customer_id, points, status) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (order_id) DO UPDATE SET status = excluded.status",
        (points.order_id, points.customer_id, points.points, points.status.value),
    )


async def add_to_balance(tx: Transaction, customer_id: str, delta: int) -> int:
    """Credit (or debit, with a negative delta) a customer; returns the new balance."""
    await tx.execute(
        "INSERT INTO loyalty_accounts (customer_id, balance) VALUES (?, ?)"
        " ON CONFLICT (customer_id) DO UPDATE"
        " SET balance = loyalty_accounts.balance + excluded.balance",
        (customer_id, delta),
    )
    balance = await tx.fetchone(
        "SELECT balance FROM loyalty_accounts WHERE customer_id = ?", (customer_id,)
    )
    assert balance is not None
    return int(balance[0])


async def balance_of(tx: Transaction, customer_id: str) -> int | None:
    row = await tx.fetchone(
        "SELECT balance FROM loyalty_accounts WHERE customer_id = ?", (customer_id,)
    )
    return None if row is None else int(row[0])
