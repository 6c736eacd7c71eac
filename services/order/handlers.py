"""The order service's reactions to the saga: load the order, decide, save, emit.

Every decision is a domain transition, so a duplicate or late event is a no-op that emits
nothing. An event about an order this service never created cannot become right by retrying
(orders are committed before their ``OrderCreated`` is published), so it is dead-lettered.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from google.protobuf.message import Message

from choreo.errors import PermanentError, TransientError
from choreo.handling import Handler, HandlerContext
from choreo.inventory.v1 import events_pb2 as inventory_events
from choreo.notification.v1 import events_pb2 as notification_events
from choreo.payment.v1 import events_pb2 as payment_events
from choreo.shipping.v1 import events_pb2 as shipping_events
from services.order import domain, mapping, store
from services.order.domain import CancellationReason, Order, Transition

Decide = Callable[[Order, datetime], Transition]
Emit = Callable[[Order], Message]


def _now() -> datetime:
    return datetime.now(UTC)


async def _apply(ctx: HandlerContext, order_id: str, decide: Decide, emit: Emit | None) -> None:
    before = await store.load_order(ctx.tx, order_id)
    if before is None:
        raise PermanentError(
            f"order {order_id!r} does not exist in the order service: the event names an order"
            f" that was never placed here ({ctx.envelope.event_type} from {ctx.envelope.source},"
            f" event {ctx.envelope.event_id})"
        )
    transition = decide(before, _now())
    if not transition.changed:
        return
    if not await store.save_order(ctx.tx, before, transition.order):
        # Another writer changed the order between our read and write (Postgres): decide again.
        raise TransientError(f"order {order_id} changed concurrently; retrying")
    if transition.emit and emit is not None:
        ctx.emit(emit(transition.order), aggregate_id=order_id)


async def _cancel(
    ctx: HandlerContext, order_id: str, reason: CancellationReason, detail: str
) -> None:
    await _apply(
        ctx,
        order_id,
        lambda order, at: domain.cancel(order, reason, detail, at),
        mapping.order_cancelled,
    )


def _explained(step: str, detail: str, reason: str) -> str:
    return f"{step}: {detail}" if detail else f"{step} ({reason})"


async def on_payment_completed(ctx: HandlerContext, event: payment_events.PaymentCompleted) -> None:
    await _apply(
        ctx,
        event.order_id,
        lambda order, at: domain.confirm(order, event.payment_id, at),
        mapping.order_confirmed,
    )


async def on_shipment_created(ctx: HandlerContext, event: shipping_events.ShipmentCreated) -> None:
    await _apply(
        ctx,
        event.order_id,
        lambda order, at: domain.ship(order, event.shipment_id, event.tracking_id, at),
        mapping.order_shipped,
    )


async def on_notification_sent(
    ctx: HandlerContext, event: notification_events.NotificationSent
) -> None:
    await _apply(ctx, event.order_id, domain.mark_notified, None)


async def on_inventory_reservation_failed(
    ctx: HandlerContext, event: inventory_events.InventoryReservationFailed
) -> None:
    reason = inventory_events.ReservationFailureReason.Name(event.reason)
    detail = _explained("the stock could not be reserved", event.detail, reason)
    await _cancel(ctx, event.order_id, CancellationReason.INVENTORY_UNAVAILABLE, detail)


async def on_payment_failed(ctx: HandlerContext, event: payment_events.PaymentFailed) -> None:
    reason = payment_events.PaymentFailureReason.Name(event.reason)
    detail = _explained("the payment failed", event.detail, reason)
    await _cancel(ctx, event.order_id, CancellationReason.PAYMENT_FAILED, detail)


async def on_shipping_failed(ctx: HandlerContext, event: shipping_events.ShippingFailed) -> None:
    reason = shipping_events.ShippingFailureReason.Name(event.reason)
    detail = _explained("the shipment could not be booked", event.detail, reason)
    await _cancel(ctx, event.order_id, CancellationReason.SHIPPING_FAILED, detail)


HANDLERS: dict[type[Message], Handler] = {
    payment_events.PaymentCompleted: on_payment_completed,
    shipping_events.ShipmentCreated: on_shipment_created,
    notification_events.NotificationSent: on_notification_sent,
    inventory_events.InventoryReservationFailed: on_inventory_reservation_failed,
    payment_events.PaymentFailed: on_payment_failed,
    shipping_events.ShippingFailed: on_shipping_failed,
}
