"""The order service's reactions to the saga: load the order, decide, save, emit.

Every decision is a domain transition, so a duplicate or late event is a no-op that emits
nothing. An event about an order this service never created cannot become right by retrying
(orders are committed before their ``OrderCreated`` is published), so it is dead-lettered.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime

from google.protobuf.message import Message

from choreo.errors import PermanentError, TransientError
from choreo.handling import Handler, HandlerContext
from services.order import domain, mapping, store
from services.order.domain import CancellationReason, Order, OrderStatus, Transition
from shop.inventory.v1 import events_pb2 as inventory_events
from shop.notification.v1 import events_pb2 as notification_events
from shop.payment.v1 import events_pb2 as payment_events
from shop.shipping.v1 import events_pb2 as shipping_events

Decide = Callable[[Order, datetime], Transition]
# Told when a saga ends: (outcome "shipped" or "cancelled", seconds since the order was placed).
SagaEnded = Callable[[str, float], None]


def saga_outcome(before: Order, after: Order) -> str | None:
    """The saga's outcome when this change ends it, else None. A shipped saga ends once the
    customer is notified too (the last step), a cancelled one at the cancellation (the notice
    that follows changes nothing the customer is owed)."""

    def ended(order: Order) -> bool:
        return order.status is OrderStatus.CANCELLED or (
            order.status is OrderStatus.SHIPPED and order.customer_notified
        )

    if ended(after) and not ended(before):
        return "cancelled" if after.status is OrderStatus.CANCELLED else "shipped"
    return None


def _report_end(on_end: SagaEnded | None, before: Order, after: Order, at: datetime) -> None:
    outcome = saga_outcome(before, after)
    if outcome is not None and on_end is not None:
        on_end(outcome, max(0.0, (at - after.created_at).total_seconds()))


def _now() -> datetime:
    return datetime.now(UTC)


def status_event(order: Order, status: OrderStatus, *, carrier: str = "") -> Message:
    """The event that publishes the order's entering ``status``; ``carrier`` is the shipment's
    (OrderShipped carries it, for the customer's notification)."""
    if status is OrderStatus.CONFIRMED:
        return mapping.order_confirmed(order)
    if status is OrderStatus.SHIPPED:
        return mapping.order_shipped(order, carrier)
    if status is OrderStatus.CANCELLED:
        event = mapping.order_cancelled(order)
        # Charged: the order saw the payment, or the failed step named it (and the order
        # confirmed first); the notification mentions a refund only then.
        event.charged = bool(order.payment_id)
        return event
    raise ValueError(f"no event publishes entering {status}")


async def _apply(
    ctx: HandlerContext,
    order_id: str,
    decide: Decide,
    on_end: SagaEnded | None = None,
    *,
    carrier: str = "",
) -> None:
    before = await store.load_order(ctx.tx, order_id)
    if before is None:
        raise PermanentError(
            f"order {order_id!r} does not exist in the order service: the event names an order"
            f" that was never placed here ({ctx.envelope.event_type} from {ctx.envelope.source},"
            f" event {ctx.envelope.event_id})"
        )
    now = _now()
    transition = decide(before, now)
    if not transition.changed:
        return
    if not await store.save_order(ctx.tx, before, transition.order, transition.entered):
        # Another writer changed the order between our read and write (Postgres): decide again.
        raise TransientError(f"order {order_id} changed concurrently; retrying")
    # In the order entered, so the aggregate versions follow the order's path (OrderConfirmed
    # before the OrderShipped or OrderCancelled of a shipment outcome that overtook it).
    for status in transition.entered:
        ctx.emit(status_event(transition.order, status, carrier=carrier), aggregate_id=order_id)
    # Reported before the commit: should the commit fail, the retry reports it again (rare,
    # and a duration is a measurement, not a record).
    _report_end(on_end, before, transition.order, now)


async def _cancel(
    ctx: HandlerContext,
    order_id: str,
    reason: CancellationReason,
    detail: str,
    payment_id: str = "",
    on_end: SagaEnded | None = None,
) -> None:
    await _apply(
        ctx,
        order_id,
        lambda order, at: domain.cancel(order, reason, detail, at, payment_id=payment_id),
        on_end,
    )


def _explained(step: str, detail: str, reason: str) -> str:
    return f"{step}: {detail}" if detail else f"{step} ({reason})"


async def on_payment_completed(
    ctx: HandlerContext, event: payment_events.PaymentCompleted, on_end: SagaEnded | None = None
) -> None:
    await _apply(
        ctx,
        event.order_id,
        lambda order, at: domain.confirm(order, event.payment_id, at),
        on_end,
    )


async def on_shipment_created(
    ctx: HandlerContext, event: shipping_events.ShipmentCreated, on_end: SagaEnded | None = None
) -> None:
    await _apply(
        ctx,
        event.order_id,
        lambda order, at: domain.ship(
            order, event.shipment_id, event.tracking_id, at, payment_id=event.payment_id
        ),
        on_end,
        carrier=event.carrier,
    )


async def on_notification_sent(
    ctx: HandlerContext,
    event: notification_events.NotificationSent,
    on_end: SagaEnded | None = None,
) -> None:
    await _apply(ctx, event.order_id, domain.mark_notified, on_end)


async def on_inventory_reservation_failed(
    ctx: HandlerContext,
    event: inventory_events.InventoryReservationFailed,
    on_end: SagaEnded | None = None,
) -> None:
    reason = inventory_events.ReservationFailureReason.Name(event.reason)
    detail = _explained("the stock could not be reserved", event.detail, reason)
    await _cancel(
        ctx, event.order_id, CancellationReason.INVENTORY_UNAVAILABLE, detail, on_end=on_end
    )


async def on_payment_failed(
    ctx: HandlerContext, event: payment_events.PaymentFailed, on_end: SagaEnded | None = None
) -> None:
    reason = payment_events.PaymentFailureReason.Name(event.reason)
    detail = _explained("the payment failed", event.detail, reason)
    await _cancel(ctx, event.order_id, CancellationReason.PAYMENT_FAILED, detail, on_end=on_end)


async def on_shipping_failed(
    ctx: HandlerContext, event: shipping_events.ShippingFailed, on_end: SagaEnded | None = None
) -> None:
    reason = shipping_events.ShippingFailureReason.Name(event.reason)
    detail = _explained("the shipment could not be booked", event.detail, reason)
    await _cancel(
        ctx, event.order_id, CancellationReason.SHIPPING_FAILED, detail, event.payment_id, on_end
    )


def bind(on_end: SagaEnded | None) -> dict[type[Message], Handler]:
    """The handlers, telling ``on_end`` when a saga ends (the runtime's metrics)."""
    p = functools.partial
    return {
        payment_events.PaymentCompleted: p(on_payment_completed, on_end=on_end),
        shipping_events.ShipmentCreated: p(on_shipment_created, on_end=on_end),
        notification_events.NotificationSent: p(on_notification_sent, on_end=on_end),
        inventory_events.InventoryReservationFailed: p(
            on_inventory_reservation_failed, on_end=on_end
        ),
        payment_events.PaymentFailed: p(on_payment_failed, on_end=on_end),
        shipping_events.ShippingFailed: p(on_shipping_failed, on_end=on_end),
    }


HANDLERS: dict[type[Message], Handler] = bind(None)
