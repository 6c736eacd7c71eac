"""Inventory reactions: reserve on OrderCreated, release on a later failure, ship on shipment."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from google.protobuf.message import Message

from choreo.errors import PermanentError
from choreo.handling import Handler, HandlerContext
from choreo.inventory.v1 import events_pb2 as inventory_events
from choreo.order.v1 import events_pb2 as order_events
from choreo.order.v2 import events_pb2 as order_events_v2
from choreo.payment.v1 import events_pb2 as payment_events
from choreo.shipping.v1 import events_pb2 as shipping_events
from services.inventory import domain, mapping, store

log = logging.getLogger(__name__)


async def on_order_created(ctx: HandlerContext, event: order_events.OrderCreated) -> None:
    order_id = event.order_id
    problems = mapping.line_violations(event.lines)
    if problems:
        raise PermanentError(f"OrderCreated {order_id}: {'; '.join(problems)}")
    stock = await store.load_stock(ctx.tx, (line.sku for line in event.lines))
    outcome = domain.reserve(stock, event.lines)
    reservation_id = domain.reservation_id_for(order_id)
    now = datetime.now(UTC)
    if not await store.apply_reservation(ctx.tx, order_id, reservation_id, outcome, now):
        log.info("order %s already has a reservation outcome; nothing to do", order_id)
        return
    if isinstance(outcome, domain.Reserved):
        ctx.emit(
            inventory_events.InventoryReserved(
                order_id=order_id,
                reservation_id=reservation_id,
                lines=event.lines,
                customer_id=event.customer_id,
                total=event.total,
                payment_token=event.payment_token,
                shipping_address=event.shipping_address,
            ),
            aggregate_id=order_id,
        )
    else:
        ctx.emit(
            inventory_events.InventoryReservationFailed(
                order_id=order_id,
                customer_id=event.customer_id,
                reason=mapping.REJECTION_REASONS[outcome.reason],
                detail=mapping.rejection_detail(outcome),
                shortages=[mapping.shortage(s) for s in outcome.shortages],
            ),
            aggregate_id=order_id,
        )


async def on_order_created_v2(ctx: HandlerContext, event: order_events_v2.OrderCreated) -> None:
    """Version 2 of OrderCreated: the same reservation. During a migration window the order is
    published in both versions; whichever comes second finds the outcome and does nothing."""
    try:
        v1 = mapping.order_created_from_v2(event)
    except ValueError as exc:
        raise PermanentError(f"OrderCreated v2 {event.order_id}: {exc}") from exc
    await on_order_created(ctx, v1)


async def _release(
    ctx: HandlerContext, order_id: str, reason: inventory_events.ReleaseReason.ValueType
) -> None:
    reservation = await store.load_reservation(ctx.tx, order_id)
    decision = domain.release(reservation)
    if isinstance(decision, domain.NoChange) or reservation is None:
        log.info("order %s: no release (%s)", order_id, getattr(decision, "why", "none"))
        return
    if not await store.apply_transition(ctx.tx, order_id, decision):
        return
    ctx.emit(
        inventory_events.InventoryReleased(
            order_id=order_id,
            reservation_id=reservation.reservation_id,
            lines=mapping.quantity_lines(reservation.quantities),
            reason=reason,
        ),
        aggregate_id=order_id,
    )


async def on_payment_failed(ctx: HandlerContext, event: payment_events.PaymentFailed) -> None:
    await _release(ctx, event.order_id, inventory_events.RELEASE_REASON_PAYMENT_FAILED)


async def on_shipping_failed(ctx: HandlerContext, event: shipping_events.ShippingFailed) -> None:
    await _release(ctx, event.order_id, inventory_events.RELEASE_REASON_SHIPPING_FAILED)


async def on_order_cancelled(ctx: HandlerContext, event: order_events.OrderCancelled) -> None:
    """An order cancelled at its deadline: release its stock, or make sure none is reserved."""
    order_id = event.order_id
    if not domain.compensates_cancellation(order_events.CancellationReason.Name(event.reason)):
        return
    if await store.load_reservation(ctx.tx, order_id) is None:
        outcome = domain.cancel_before_reserving()
        reservation_id = domain.reservation_id_for(order_id)
        await store.apply_reservation(ctx.tx, order_id, reservation_id, outcome, datetime.now(UTC))
        return
    await _release(ctx, order_id, inventory_events.RELEASE_REASON_ORDER_CANCELLED)


async def on_shipment_created(ctx: HandlerContext, event: shipping_events.ShipmentCreated) -> None:
    order_id = event.order_id
    reservation = await store.load_reservation(ctx.tx, order_id)
    decision = domain.ship(reservation)
    if isinstance(decision, domain.NoChange) or reservation is None:
        log.info("order %s: nothing ships (%s)", order_id, getattr(decision, "why", "none"))
        return
    if not await store.apply_transition(ctx.tx, order_id, decision):
        return
    ctx.emit(
        inventory_events.InventoryShipped(
            order_id=order_id,
            reservation_id=reservation.reservation_id,
            shipment_id=event.shipment_id,
            lines=mapping.quantity_lines(reservation.quantities),
        ),
        aggregate_id=order_id,
    )


HANDLERS: dict[type[Message], Handler] = {
    order_events.OrderCreated: on_order_created,
    order_events_v2.OrderCreated: on_order_created_v2,
    payment_events.PaymentFailed: on_payment_failed,
    shipping_events.ShippingFailed: on_shipping_failed,
    shipping_events.ShipmentCreated: on_shipment_created,
    order_events.OrderCancelled: on_order_cancelled,
}
