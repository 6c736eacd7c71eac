"""Inventory tables and queries; stock moves only through guarded deltas (``apply_adjustments``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime

from choreo.errors import TransientError
from choreo.store.port import Row, Transaction
from services import cancellations

# Re-exported: the handlers read every query of the service through its store.
from services.cancellations import is_cancelled as is_cancelled
from services.cancellations import remember_cancelled as remember_cancelled
from services.catalog import Catalog
from services.inventory.domain import (
    Reservation,
    ReservationRejected,
    ReservationStatus,
    Reserved,
    SkuQuantity,
    StockAdjustment,
    StockLevel,
    Transition,
)
from services.paging import KeysetQuery, fetch_page
from services.values import to_iso

SCHEMA: list[str] = [
    """CREATE TABLE IF NOT EXISTS stock (
        sku TEXT PRIMARY KEY,
        initial BIGINT NOT NULL,
        available BIGINT NOT NULL,
        reserved BIGINT NOT NULL,
        shipped BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS reservations (
        order_id TEXT PRIMARY KEY,
        reservation_id TEXT NOT NULL,
        status TEXT NOT NULL,
        lines_json TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    # Orders this service heard were cancelled (any reason): a late OrderCreated reserves
    # nothing and a late ShipmentCreated ships nothing out, so a cancellation wins.
    cancellations.TABLE,
]


class StockConflict(TransientError):
    """Stock changed between load and update (another writer); retrying decides again, so the
    runtime naks it with backoff like any other transient failure."""


async def seed_stock(tx: Transaction, catalog: Catalog) -> int:
    """Insert catalog SKUs that are missing; existing stock is never reset by a restart."""
    inserted = 0
    for product in catalog.products.values():
        n = product.initial_stock
        inserted += await tx.execute(
            "INSERT INTO stock (sku, initial, available, reserved, shipped) VALUES (?, ?, ?, 0, 0)"
            " ON CONFLICT (sku) DO NOTHING",
            (product.sku, n, n),
        )
    return inserted


def _level(row: Row) -> StockLevel:
    sku, initial, available, reserved, shipped = row
    return StockLevel(sku, int(initial), int(available), int(reserved), int(shipped))


async def load_stock(tx: Transaction, skus: Iterable[str]) -> dict[str, StockLevel]:
    """Levels of the given SKUs; unknown SKUs are simply absent from the result."""
    wanted = sorted(set(skus))
    if not wanted:
        return {}
    marks = ", ".join("?" for _ in wanted)
    rows = await tx.fetchall(
        f"SELECT sku, initial, available, reserved, shipped FROM stock WHERE sku IN ({marks})",
        wanted,
    )
    return {row[0]: _level(row) for row in rows}


async def stock_level(tx: Transaction, sku: str) -> StockLevel | None:
    row = await tx.fetchone(
        "SELECT sku, initial, available, reserved, shipped FROM stock WHERE sku = ?", (sku,)
    )
    return _level(row) if row else None


async def all_stock(tx: Transaction) -> list[StockLevel]:
    rows = await tx.fetchall(
        "SELECT sku, initial, available, reserved, shipped FROM stock ORDER BY sku"
    )
    return [_level(row) for row in rows]


async def apply_adjustments(tx: Transaction, adjustments: Iterable[StockAdjustment]) -> None:
    # The WHERE clause re-checks the decision inside the UPDATE: on Postgres two transactions
    # may both have read the old level, and only one of them may take the last items.
    # Rows are locked in one global order (by SKU), never in the client's line order: two
    # orders for the same SKUs in opposite order would otherwise each hold one row lock and
    # wait for the other's (a deadlock on Postgres, which aborts one of them to retry).
    for a in sorted(adjustments, key=lambda adjustment: adjustment.sku):
        changed = await tx.execute(
            "UPDATE stock SET available = available + ?, reserved = reserved + ?,"
            " shipped = shipped + ?"
            " WHERE sku = ? AND available + ? >= 0 AND reserved + ? >= 0 AND shipped + ? >= 0",
            (a.available, a.reserved, a.shipped, a.sku, a.available, a.reserved, a.shipped),
        )
        if changed != 1:
            raise StockConflict(f"stock of {a.sku} changed concurrently or is missing")


def _lines_json(quantities: Iterable[SkuQuantity]) -> str:
    return json.dumps([{"sku": q.sku, "quantity": q.quantity} for q in quantities])


async def apply_reservation(
    tx: Transaction,
    order_id: str,
    reservation_id: str,
    outcome: Reserved | ReservationRejected,
    created_at: datetime,
) -> bool:
    """Record the outcome for the order and, when reserved, move the stock.

    Returns False when the order already has a reservation record: stock is then left alone, so
    even a redelivery that slipped past the inbox cannot reserve twice.
    """
    status = (
        ReservationStatus.RESERVED if isinstance(outcome, Reserved) else ReservationStatus.REJECTED
    )
    inserted = await tx.execute(
        "INSERT INTO reservations (order_id, reservation_id, status, lines_json, created_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (order_id) DO NOTHING",
        (
            order_id,
            reservation_id,
            status.value,
            _lines_json(outcome.quantities),
            to_iso(created_at),
        ),
    )
    if inserted and isinstance(outcome, Reserved):
        await apply_adjustments(tx, outcome.adjustments)
    return bool(inserted)


def _reservation(row: Row) -> Reservation:
    quantities = tuple(SkuQuantity(d["sku"], int(d["quantity"])) for d in json.loads(row[3]))
    return Reservation(row[0], row[1], ReservationStatus(row[2]), quantities)


async def load_reservation(tx: Transaction, order_id: str) -> Reservation | None:
    row = await tx.fetchone(
        "SELECT order_id, reservation_id, status, lines_json FROM reservations WHERE order_id = ?",
        (order_id,),
    )
    return _reservation(row) if row else None


_STOCK_PAGES = KeysetQuery(
    rpc="ListStock",
    table="stock",
    select="sku, initial, available, reserved, shipped",
    keys=("sku",),
    key_of=lambda row: (str(row[0]),),
)
# A rejected order reserved nothing, so (as in GetReservation) it has no reservation to list.
_RESERVATION_PAGES = KeysetQuery(
    rpc="ListReservations",
    table="reservations",
    select="order_id, reservation_id, status, lines_json, created_at",
    keys=("created_at", "order_id"),
    key_of=lambda row: (str(row[4]), str(row[0])),
    descending=True,
    where=f"status <> '{ReservationStatus.REJECTED.value}'",
)


async def list_stock(
    tx: Transaction, page_size: int, page_token: str
) -> tuple[list[StockLevel], str]:
    """A page of stock levels by SKU, and the next page's token ('' on the last)."""
    rows, token = await fetch_page(tx, _STOCK_PAGES, page_size, page_token)
    return [_level(row) for row in rows], token


async def list_reservations(
    tx: Transaction, page_size: int, page_token: str
) -> tuple[list[Reservation], str]:
    """A page of reservations, newest first, and the next page's token ('' on the last)."""
    rows, token = await fetch_page(tx, _RESERVATION_PAGES, page_size, page_token)
    return [_reservation(row) for row in rows], token


async def set_reservation_status(
    tx: Transaction, order_id: str, expected: ReservationStatus, new: ReservationStatus
) -> bool:
    """Compare-and-set, so two handlers racing on one reservation cannot both move its stock."""
    changed = await tx.execute(
        "UPDATE reservations SET status = ? WHERE order_id = ? AND status = ?",
        (new.value, order_id, expected.value),
    )
    return changed == 1


async def apply_transition(
    tx: Transaction,
    order_id: str,
    transition: Transition,
    expected: ReservationStatus = ReservationStatus.RESERVED,
) -> bool:
    """Move a reservation from ``expected`` (RESERVED: to RELEASED/SHIPPED; SHIPPED: to
    RETURNED) and its stock with it, or do nothing."""
    if not await set_reservation_status(tx, order_id, expected, transition.status):
        return False
    await apply_adjustments(tx, transition.adjustments)
    return True
