"""Shipping tables and queries: one shipment row per order, booked or failed."""

from __future__ import annotations

import json
from datetime import datetime

from choreo.store.port import Row, Transaction
from services import cancellations

# Re-exported: the handlers read every query of the service through its store.
from services.cancellations import is_cancelled as is_cancelled
from services.cancellations import remember_cancelled as remember_cancelled
from services.paging import KeysetQuery, fetch_page
from services.shipping.domain import Shipment, ShipmentStatus
from services.values import Address, to_iso

SCHEMA: list[str] = [
    """CREATE TABLE IF NOT EXISTS shipments (
        order_id TEXT PRIMARY KEY,
        shipment_id TEXT NOT NULL,
        tracking_id TEXT NOT NULL,
        carrier TEXT NOT NULL,
        status TEXT NOT NULL,
        failure_reason TEXT NOT NULL,
        destination_json TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    # Orders this service heard were cancelled (any reason): a late PaymentCompleted for one
    # books nothing, so a cancellation wins against a late step.
    cancellations.TABLE,
]

_COLUMNS = "order_id, status, destination_json, shipment_id, tracking_id, carrier, failure_reason"


def _shipment(row: Row) -> Shipment:
    order_id, status, destination, shipment_id, tracking_id, carrier, reason = row
    return Shipment(
        order_id,
        ShipmentStatus(status),
        Address(**json.loads(destination)),
        shipment_id,
        tracking_id,
        carrier,
        reason,
    )


async def insert_shipment(tx: Transaction, shipment: Shipment, now: datetime) -> bool:
    """False when the order already has a shipment: the first recorded answer stands."""
    s = shipment
    inserted = await tx.execute(
        f"INSERT INTO shipments ({_COLUMNS}, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (order_id) DO NOTHING",
        (
            s.order_id,
            s.status.value,
            json.dumps(s.destination.as_dict()),
            s.shipment_id,
            s.tracking_id,
            s.carrier,
            s.failure_reason,
            to_iso(now),
        ),
    )
    return inserted == 1


async def load_shipment(tx: Transaction, order_id: str) -> Shipment | None:
    row = await tx.fetchone(f"SELECT {_COLUMNS} FROM shipments WHERE order_id = ?", (order_id,))
    return _shipment(row) if row else None


async def list_shipments(tx: Transaction, limit: int = 100) -> list[Shipment]:
    sql = f"SELECT {_COLUMNS} FROM shipments ORDER BY order_id LIMIT ?"
    rows = await tx.fetchall(sql, (limit,))
    return [_shipment(row) for row in rows]


_SHIPMENT_PAGES = KeysetQuery(
    rpc="ListShipments",
    table="shipments",
    select=f"{_COLUMNS}, created_at",
    keys=("created_at", "order_id"),
    key_of=lambda row: (str(row[-1]), str(row[0])),
    descending=True,
)


async def page_of_shipments(
    tx: Transaction, page_size: int, page_token: str
) -> tuple[list[Shipment], str]:
    """A page of shipments, newest first, and the next page's token ('' on the last)."""
    rows, token = await fetch_page(tx, _SHIPMENT_PAGES, page_size, page_token)
    return [_shipment(row[:-1]) for row in rows], token


async def mark_cancelled(tx: Transaction, order_id: str, why: str) -> bool:
    """Compare-and-set BOOKED -> CANCELLED: the booking was cancelled at the carrier."""
    changed = await tx.execute(
        "UPDATE shipments SET status = ?, failure_reason = ? WHERE order_id = ? AND status = ?",
        (ShipmentStatus.CANCELLED.value, why, order_id, ShipmentStatus.BOOKED.value),
    )
    return changed == 1
