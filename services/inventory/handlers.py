"""Inventory reactions: reserve on OrderCreated, release on a later failure, ship on shipment.

A cancellation wins against a late forward step: every OrderCancelled is remembered (a
tombstone), so a late OrderCreated reserves nothing and a late ShipmentCreated ships nothing
out; stock a late shipment did ship out for an order cancelled afterwards is returned (the
shipping service cancels that booking at the carrier), so a cancelled order keeps no stock.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from google.protobuf.message import Message

from choreo.errors import PermanentError, TransientError
from choreo.handling import Handler, HandlerContext
from services.inventory import domain, mapping, store
from shop.inventory.v1 import events_pb2 as inventory_events
from shop.order.v1 import events_pb2 as order_events
from shop.order.v2 import events_pb2 as order_events_v2
from shop.payment.v1 import events_pb2 as payment_events
from shop.shipping.v1 import events_pb2 as shipping_events

log = logging.getLogger(__name__)


async def on_order_created(ctx: HandlerContext, event: order_events.OrderCreated) -> None:
    order_id = event.order_id
    problems = mapping.line_violations(event.lines)
    if problems:
        raise PermanentError(f"OrderCreated {order_id}: {'; '.join(problems)}")
    reservation_id = domain.reservation_id_for(order_id)
    now = datetime.now(UTC)
    if await store.is_cancelled(ctx.tx, order_id):
        # The cancellation got here first: reserve nothing, and record that as the outcome.
        outcome_cancelled = domain.cancel_before_reserving()
        await store.apply_reservation(ctx.tx, order_id, reservation_id, outcome_cancelled, now)
        log.info("order %s is cancelled; nothing reserved", order_id)
        return
    stock = await store.load_stock(ctx.tx, (line.sku for line in event.lines))
    outcome = domain.reserve(stock, event.lines)
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
    _emit_released(ctx, reservation, reason)


async def on_payment_failed(ctx: HandlerContext, event: payment_events.PaymentFailed) -> None:
    await _release(ctx, event.order_id, inventory_events.RELEASE_REASON_PAYMENT_FAILED)


async def on_shipping_failed(ctx: HandlerContext, event: shipping_events.ShippingFailed) -> None:
    await _release(ctx, event.order_id, inventory_events.RELEASE_REASON_SHIPPING_FAILED)


async def on_order_cancelled(ctx: HandlerContext, event: order_events.OrderCancelled) -> None:
    """Remember the cancellation (any reason). Stock shipped out for the order is returned
    (any reason: the booking is cancelled). At the saga deadline, reserved stock is released,
    or, with nothing reserved yet, a late OrderCreated is made to reserve nothing."""
    order_id = event.order_id
    reason = order_events.CancellationReason.Name(event.reason)
    now = datetime.now(UTC)
    await store.remember_cancelled(ctx.tx, order_id, reason, now)
    reservation = await store.load_reservation(ctx.tx, order_id)
    if reservation is not None and reservation.status is domain.ReservationStatus.SHIPPED:
        await _return_shipped(ctx, reservation)
        return
    if not domain.compensates_cancellation(reason):
        return
    if reservation is None:
        outcome = domain.cancel_before_reserving()
        reservation_id = domain.reservation_id_for(order_id)
        await store.apply_reservation(ctx.tx, order_id, reservation_id, outcome, now)
        return
    if reservation.status is domain.ReservationStatus.RESERVED:
        decision = domain.release(reservation)
        if isinstance(decision, domain.Transition) and not await store.apply_transition(
            ctx.tx, order_id, decision
        ):
            # Shipped or released by a concurrent writer (Postgres): decide again.
            raise TransientError(f"reservation of order {order_id} changed; deciding again")
        if isinstance(decision, domain.Transition):
            _emit_released(ctx, reservation, inventory_events.RELEASE_REASON_ORDER_CANCELLED)


async def _return_shipped(ctx: HandlerContext, reservation: domain.Reservation) -> None:
    decision = domain.return_shipped(reservation)
    if isinstance(decision, domain.NoChange):
        return
    if not await store.apply_transition(
        ctx.tx, reservation.order_id, decision, expected=domain.ReservationStatus.SHIPPED
    ):
        raise TransientError(f"reservation of order {reservation.order_id} changed; retrying")
    log.warning(
        "order %s was cancelled after its stock shipped out; the stock is returned",
        reservation.order_id,
    )
    _emit_released(ctx, reservation, inventory_events.RELEASE_REASON_ORDER_CANCELLED)


def _emit_released(
    ctx: HandlerContext,
    reservation: domain.Reservation,
    reason: inventory_events.ReleaseReason.ValueType,
) -> None:
    ctx.emit(
        inventory_events.InventoryReleased(
            order_id=reservation.order_id,
            reservation_id=reservation.reservation_id,
            lines=mapping.quantity_lines(reservation.quantities),
            reason=reason,
        ),
        aggregate_id=reservation.order_id,
    )


async def on_shipment_created(ctx: HandlerContext, event: shipping_events.ShipmentCreated) -> None:
    order_id = event.order_id
    if await store.is_cancelled(ctx.tx, order_id):
        # A booking that lost the race to the cancellation: shipping cancels it at the carrier,
        # nothing leaves the warehouse.
        log.info("order %s is cancelled; nothing ships out", order_id)
        return
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
