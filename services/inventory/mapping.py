"""Proto ⇄ domain for inventory: order lines in, stock levels and reservations out."""

from __future__ import annotations

from collections.abc import Iterable

from services.inventory import domain
from services.values import decimal_to_minor
from shop.common.v1 import money_pb2, order_line_pb2
from shop.common.v2 import money_pb2 as money_v2_pb2
from shop.inventory.v1 import events_pb2, inventory_service_pb2
from shop.order.v1 import events_pb2 as order_events
from shop.order.v2 import events_pb2 as order_events_v2

REJECTION_REASONS = {
    domain.RejectionReason.UNKNOWN_SKU: events_pb2.RESERVATION_FAILURE_REASON_UNKNOWN_SKU,
    domain.RejectionReason.INSUFFICIENT_STOCK: (
        events_pb2.RESERVATION_FAILURE_REASON_INSUFFICIENT_STOCK
    ),
}

RESERVATION_STATUSES = {
    domain.ReservationStatus.RESERVED: inventory_service_pb2.RESERVATION_STATUS_RESERVED,
    domain.ReservationStatus.RELEASED: inventory_service_pb2.RESERVATION_STATUS_RELEASED,
    domain.ReservationStatus.SHIPPED: inventory_service_pb2.RESERVATION_STATUS_SHIPPED,
    # The contract has no RETURNED status: the stock is available again, as when released.
    domain.ReservationStatus.RETURNED: inventory_service_pb2.RESERVATION_STATUS_RELEASED,
}


def money_v1(money: money_v2_pb2.Money, field: str) -> money_pb2.Money:
    """An exact decimal amount in minor units; ValueError naming ``field`` if it has none."""
    try:
        minor = decimal_to_minor(money.units, money.nanos, money.currency_code)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    return money_pb2.Money(amount_minor=minor, currency_code=money.currency_code)


def order_created_from_v2(event: order_events_v2.OrderCreated) -> order_events.OrderCreated:
    """A v2 OrderCreated in the terms inventory works and publishes in (InventoryReserved is a
    v1 contract, amounts in minor units). ValueError names a field whose amount is not exact."""
    return order_events.OrderCreated(
        order_id=event.order_id,
        customer_id=event.customer_id,
        lines=[
            order_line_pb2.OrderLine(
                sku=line.sku,
                quantity=line.quantity,
                unit_price=money_v1(line.unit_price, f"lines[{i}].unit_price"),
            )
            for i, line in enumerate(event.lines)
        ],
        total=money_v1(event.total, "total"),
        shipping_address=event.shipping_address,
        payment_token=event.payment_token,
        placed_at=event.placed_at,
    )


def line_violations(lines: Iterable[order_line_pb2.OrderLine]) -> list[str]:
    """What is wrong with the lines of an incoming order; a negative quantity would create stock."""
    problems = []
    for i, line in enumerate(lines):
        if not line.sku:
            problems.append(f"lines[{i}].sku is empty")
        if line.quantity <= 0:
            problems.append(f"lines[{i}].quantity {line.quantity} is not positive")
    return problems


def quantity_lines(quantities: Iterable[domain.SkuQuantity]) -> list[order_line_pb2.OrderLine]:
    # A reservation keeps quantities only; prices belong to the order, so none are sent here.
    return [order_line_pb2.OrderLine(sku=q.sku, quantity=q.quantity) for q in quantities]


def shortage(value: domain.Shortage) -> events_pb2.StockShortage:
    return events_pb2.StockShortage(
        sku=value.sku, requested=value.requested, available=value.available
    )


def rejection_detail(rejected: domain.ReservationRejected) -> str:
    parts = ", ".join(
        f"{s.sku}: requested {s.requested}, available {s.available}" for s in rejected.shortages
    )
    if rejected.reason is domain.RejectionReason.UNKNOWN_SKU:
        return f"unknown SKU ({parts})"
    return f"insufficient stock ({parts})"


def stock_level(level: domain.StockLevel) -> inventory_service_pb2.StockLevel:
    return inventory_service_pb2.StockLevel(
        sku=level.sku, available=level.available, reserved=level.reserved, shipped=level.shipped
    )


def reservation(value: domain.Reservation) -> inventory_service_pb2.Reservation:
    return inventory_service_pb2.Reservation(
        order_id=value.order_id,
        reservation_id=value.reservation_id,
        lines=quantity_lines(value.quantities),
        status=RESERVATION_STATUSES.get(
            value.status, inventory_service_pb2.RESERVATION_STATUS_UNSPECIFIED
        ),
    )
