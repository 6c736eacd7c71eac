"""Shipping reaction: book a paid order's shipment with the provider.

The provider is called before the handler's transaction opens (it can be slow and the
service's database takes one writer at a time); its idempotency key makes a retried call
return the first booking or refusal, and the insert records only the first answer.

When booking gives up (the provider did not answer within the retry budget, or the step was
rejected), the booking key is cancelled at the provider first, so a booking it may have made is
undone and one still in flight is refused, then ``ShippingFailed`` is emitted: payment refunds,
inventory releases, the order is cancelled. An order cancelled at its saga deadline has its
booking cancelled the same way.

A booking found again by its key (a retry, or an operator's replay of a dead letter) is trusted
only as far as its *current* status: one the carrier has since cancelled fails the step
(``ShippingFailed``), never announces a shipment. Every cancellation is remembered (a
tombstone): a late ``PaymentCompleted`` for a cancelled order books nothing, and a booking made
before the cancellation arrived is cancelled at the carrier and recorded ``CANCELLED``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message

from choreo.errors import PermanentError, TransientError
from choreo.handling import GaveUp, GiveUpHandler, Handler, HandlerContext
from choreo.store.port import Database
from services.shipping import domain, mapping, store
from services.shipping.provider import (
    CANCELLED_REASON,
    FakeShippingProvider,
    IdempotencyKeyReused,
    ProviderUnavailable,
    Unserviceable,
)
from shop.order.v1 import events_pb2 as order_events
from shop.payment.v1 import events_pb2 as payment_events
from shop.shipping.v1 import events_pb2 as shipping_events

log = logging.getLogger(__name__)


@dataclass
class Dependencies:
    provider: FakeShippingProvider
    # Attached when the service starts; used for the short read before a provider call.
    db: Database | None = None

    async def shipment(self, order_id: str) -> domain.Shipment | None:
        if self.db is None:
            raise RuntimeError("shipping handlers used before the service started")
        async with self.db.read() as tx:
            return await store.load_shipment(tx, order_id)

    async def shipment_and_tombstone(self, order_id: str) -> tuple[domain.Shipment | None, bool]:
        """The order's shipment, and whether it was cancelled: one short read."""
        if self.db is None:
            raise RuntimeError("shipping handlers used before the service started")
        async with self.db.read() as tx:
            return await store.load_shipment(tx, order_id), await store.is_cancelled(tx, order_id)


async def on_payment_completed(
    deps: Dependencies, ctx: HandlerContext, event: payment_events.PaymentCompleted
) -> None:
    order_id = event.order_id
    destination = mapping.address_from_proto(event.shipping_address)
    existing, cancelled = await deps.shipment_and_tombstone(order_id)
    if not domain.should_book(existing):
        log.info("order %s already has a shipment; not booking again", order_id)
        return
    if cancelled:
        # The cancellation got here first: book nothing. The key is cancelled at the carrier,
        # so a booking an earlier attempt may have made is undone and one in flight refused.
        await _cancel_booking(deps, ctx, order_id)
        log.info("order %s is cancelled; not booking", order_id)
        await store.insert_shipment(ctx.tx, domain.cancelled(order_id), datetime.now(UTC))
        return
    reason = shipping_events.SHIPPING_FAILURE_REASON_UNSERVICEABLE_DESTINATION
    try:
        booking = await ctx.call(
            deps.provider.book(domain.booking_key(order_id), order_id, destination),
            f"booking order {order_id}",
        )
    except ProviderUnavailable as exc:
        raise TransientError(f"booking order {order_id}: {exc}") from exc
    except IdempotencyKeyReused as exc:
        raise PermanentError(f"booking order {order_id}: {exc}") from exc
    except Unserviceable as refusal:
        shipment = domain.refused(order_id, destination, refusal.reason)
        if refusal.reason == CANCELLED_REASON:
            # Its key was cancelled before anything was booked (a give-up): not the address.
            reason = shipping_events.SHIPPING_FAILURE_REASON_PROVIDER_UNAVAILABLE
    else:
        if booking.status is domain.BookingStatus.CANCELLED:
            # Cancelled since (a give-up's cancel whose answer was lost): the step failed.
            log.warning("order %s: booking %s was since cancelled", order_id, booking.shipment_id)
            shipment = domain.booking_cancelled(order_id, destination, booking)
            reason = shipping_events.SHIPPING_FAILURE_REASON_PROVIDER_UNAVAILABLE
        else:
            shipment = domain.booked(order_id, destination, booking)
    if await store.is_cancelled(ctx.tx, order_id):
        # Cancelled while the carrier was answering: decide again, from the tombstone.
        raise TransientError(f"order {order_id} was cancelled while booking; deciding again")
    if not await store.insert_shipment(ctx.tx, shipment, datetime.now(UTC)):
        return
    if shipment.status is domain.ShipmentStatus.BOOKED:
        ctx.emit(
            shipping_events.ShipmentCreated(
                order_id=order_id,
                shipment_id=shipment.shipment_id,
                tracking_id=shipment.tracking_id,
                carrier=shipment.carrier,
                customer_id=event.customer_id,
                destination=event.shipping_address,
                payment_id=event.payment_id,
            ),
            aggregate_id=order_id,
        )
    else:
        ctx.emit(
            shipping_events.ShippingFailed(
                order_id=order_id,
                customer_id=event.customer_id,
                payment_id=event.payment_id,
                reason=reason,
                detail=shipment.failure_reason,
            ),
            aggregate_id=order_id,
        )


async def _cancel_booking(deps: Dependencies, ctx: HandlerContext, order_id: str) -> str:
    try:
        return await ctx.call(
            deps.provider.cancel(domain.booking_key(order_id), order_id),
            f"cancelling the booking of order {order_id}",
        )
    except ProviderUnavailable as exc:
        raise TransientError(f"cancelling the booking of order {order_id}: {exc}") from exc


async def give_up_booking(
    deps: Dependencies, ctx: HandlerContext, event: payment_events.PaymentCompleted, why: GaveUp
) -> None:
    """Booking gave up: cancel the key (undo a booking it may have made), then fail the step."""
    order_id = event.order_id
    cancelled = await _cancel_booking(deps, ctx, order_id)
    detail = f"the shipping provider did not answer ({why.reason}: {why.detail})"
    if cancelled:
        detail += f"; booking {cancelled} cancelled"
    destination = mapping.address_from_proto(event.shipping_address)
    if not await store.insert_shipment(
        ctx.tx, domain.gave_up(order_id, destination, detail[:500]), datetime.now(UTC)
    ):
        return  # the order got an answer already (e.g. its deadline cancelled it)
    ctx.emit(
        shipping_events.ShippingFailed(
            order_id=order_id,
            customer_id=event.customer_id,
            payment_id=event.payment_id,
            reason=shipping_events.SHIPPING_FAILURE_REASON_PROVIDER_UNAVAILABLE,
            detail=detail[:500],
        ),
        aggregate_id=order_id,
    )


async def on_order_cancelled(
    deps: Dependencies, ctx: HandlerContext, event: order_events.OrderCancelled
) -> None:
    """Remember the cancellation (any reason), so a late PaymentCompleted books nothing. A
    booking made before the cancellation arrived is cancelled at the carrier and recorded
    CANCELLED; at the saga deadline, a booking still in flight is refused too."""
    order_id = event.order_id
    reason = order_events.CancellationReason.Name(event.reason)
    shipment = await deps.shipment(order_id)
    now = datetime.now(UTC)
    if shipment is not None and shipment.status is domain.ShipmentStatus.BOOKED:
        cancelled = await _cancel_booking(deps, ctx, order_id)
        log.info("order %s cancelled after its booking; booking %r cancelled", order_id, cancelled)
        await store.mark_cancelled(ctx.tx, order_id, domain.ORDER_CANCELLED)
    elif shipment is None and domain.compensates_cancellation(reason):
        cancelled = await _cancel_booking(deps, ctx, order_id)
        log.info("order %s cancelled at its deadline; booking cancelled: %r", order_id, cancelled)
        if not await store.insert_shipment(ctx.tx, domain.cancelled(order_id), now):
            # A booking was recorded meanwhile; the carrier has just cancelled it.
            await store.mark_cancelled(ctx.tx, order_id, domain.ORDER_CANCELLED)
    elif shipment is None:
        booked = await store.load_shipment(ctx.tx, order_id)
        if booked is not None and booked.status is domain.ShipmentStatus.BOOKED:
            raise TransientError(f"order {order_id} was booked meanwhile; deciding again")
    await store.remember_cancelled(ctx.tx, order_id, reason, now)


DependentHandler = Callable[[Dependencies, HandlerContext, Any], Awaitable[None]]
DependentGiveUp = Callable[[Dependencies, HandlerContext, Any, GaveUp], Awaitable[None]]

HANDLERS: dict[type[Message], DependentHandler] = {
    payment_events.PaymentCompleted: on_payment_completed,
    order_events.OrderCancelled: on_order_cancelled,
}

# Booking has a business failure event: when it gives up, it emits it.
GIVE_UPS: dict[type[Message], DependentGiveUp] = {
    payment_events.PaymentCompleted: give_up_booking,
}


def bind(deps: Dependencies) -> dict[type[Message], Handler]:
    """The handlers with their dependencies filled in, as the runtime calls them."""
    return {cls: functools.partial(handler, deps) for cls, handler in HANDLERS.items()}


def bind_give_ups(deps: Dependencies) -> dict[type[Message], GiveUpHandler]:
    return {cls: functools.partial(give_up, deps) for cls, give_up in GIVE_UPS.items()}
