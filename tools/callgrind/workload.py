"""The step both builds run per event: inventory reserving stock for a new order.

``OrderCreated`` in (two lines, an address, a sealed-token-sized string), two stock updates and
a reservation insert in one transaction, ``InventoryReserved`` out. The domain work is the same
function for choreo's handler and the FastStream handler, so the budget's difference between
them is the runtime's, not the domain's.
"""

from __future__ import annotations

import time

from choreo.envelope import Envelope, root_envelope
from choreo.handling import HandlerContext
from choreo.store.port import Transaction
from shop.common.v1 import address_pb2, money_pb2, order_line_pb2
from shop.inventory.v1 import events_pb2 as inventory_events
from shop.order.v1 import events_pb2 as order_events

SERVICE = "inventory"
SKUS = ("SKU-MUG", "SKU-TEE")
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS bench_stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bench_reservations (order_id TEXT PRIMARY KEY,"
    " reservation_id TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
]
SEED_STOCK_SQL = "INSERT INTO bench_stock (sku, available) VALUES (?, ?) ON CONFLICT DO NOTHING"
RESERVE_LINE_SQL = (
    "UPDATE bench_stock SET available = available - ? WHERE sku = ? AND available >= ?"
)
INSERT_RESERVATION_SQL = (
    "INSERT INTO bench_reservations (order_id, reservation_id, created_at) VALUES (?, ?, ?)"
)
# The sealed payment token travels with the saga's events; about this size in the reference.
TOKEN = "t" * 180


def order_created(index: int) -> order_events.OrderCreated:
    order_id = f"o-{index:08d}"
    usd = "USD"
    return order_events.OrderCreated(
        order_id=order_id,
        customer_id=f"c-{index % 97}",
        lines=[
            order_line_pb2.OrderLine(
                sku=sku,
                quantity=1 + n,
                unit_price=money_pb2.Money(amount_minor=900 + 100 * n, currency_code=usd),
            )
            for n, sku in enumerate(SKUS)
        ],
        total=money_pb2.Money(amount_minor=2900, currency_code=usd),
        shipping_address=address_pb2.Address(
            recipient_name="Ada Lovelace",
            line1="12 St James's Square",
            city="London",
            postal_code="SW1Y 4JH",
            country_code="GB",
        ),
        payment_token=TOKEN,
    )


def envelope_of(event: order_events.OrderCreated) -> Envelope:
    """The envelope the order service's command would give the event."""
    return root_envelope(
        event.DESCRIPTOR.full_name,
        source="order",
        correlation_id=event.order_id,
        aggregate_type="order",
        aggregate_id=event.order_id,
        aggregate_version=1,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )


async def seed(tx: Transaction) -> None:
    for sku in SKUS:
        await tx.execute(SEED_STOCK_SQL, (sku, 10**12))


async def reserve_stock(
    tx: Transaction, event: order_events.OrderCreated
) -> inventory_events.InventoryReserved:
    """The domain step: take the stock of every line, record the reservation."""
    reservation_id = f"r-{event.order_id}"
    for line in event.lines:
        await tx.execute(RESERVE_LINE_SQL, (line.quantity, line.sku, line.quantity))
    await tx.execute(INSERT_RESERVATION_SQL, (event.order_id, reservation_id, time.time()))
    return inventory_events.InventoryReserved(
        order_id=event.order_id,
        reservation_id=reservation_id,
        lines=event.lines,
        customer_id=event.customer_id,
        total=event.total,
        payment_token=event.payment_token,
        shipping_address=event.shipping_address,
    )


async def on_order_created(ctx: HandlerContext, event: order_events.OrderCreated) -> None:
    """choreo's handler: the domain step in the unit of work, the event emitted with it."""
    reserved = await reserve_stock(ctx.tx, event)
    ctx.emit(reserved, aggregate_id=reserved.reservation_id)


async def reserve_only(ctx: HandlerContext, event: order_events.OrderCreated) -> None:
    """The domain step without the emit: the budget tells the outbox write apart with it."""
    await reserve_stock(ctx.tx, event)


async def inbox_only(ctx: HandlerContext, event: order_events.OrderCreated) -> None:
    """No domain work: what is left of a commit is the unit of work itself (inbox, commit)."""
