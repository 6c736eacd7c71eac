"""The loyalty service's reactions to the order saga, as the runtime calls them.

The triggers are the reference system's events, decoded with its generated classes; what this
service emits is its own (acme.loyalty.v1). Exactly-once effects come from the runtime (inbox and
outbox in the same transaction as the tables here); the domain rules make the two triggers'
order irrelevant.
"""

from __future__ import annotations

import logging

from acme.loyalty.v1 import events_pb2 as loyalty_events
from google.protobuf.message import Message

from acme_loyalty import domain, store
from choreo.handling import Handler, HandlerContext
from shop.order.v1 import events_pb2 as order_events
from shop.payment.v1 import events_pb2 as payment_events

log = logging.getLogger(__name__)


async def on_payment_completed(ctx: HandlerContext, event: payment_events.PaymentCompleted) -> None:
    current = await store.order_points(ctx.tx, event.order_id)
    awarded = domain.on_paid(current, event.order_id, event.customer_id, event.amount.amount_minor)
    if awarded is None:
        log.info("order %s: payment after %s; no points", event.order_id, current)
        return
    await store.save_order_points(ctx.tx, awarded)
    balance = await store.add_to_balance(ctx.tx, awarded.customer_id, awarded.points)
    ctx.emit(
        loyalty_events.PointsAwarded(
            order_id=awarded.order_id,
            customer_id=awarded.customer_id,
            points=awarded.points,
            balance=balance,
        ),
        aggregate_id=awarded.order_id,
    )


async def on_order_cancelled(ctx: HandlerContext, event: order_events.OrderCancelled) -> None:
    current = await store.order_points(ctx.tx, event.order_id)
    after = domain.on_cancelled(current, event.order_id, event.customer_id)
    if after == current:
        return  # already revoked or void: a second cancellation changes nothing
    await store.save_order_points(ctx.tx, after)
    if after.status is not domain.Status.REVOKED:
        return  # void: nothing had been credited, so there is nothing to announce
    balance = await store.add_to_balance(ctx.tx, after.customer_id, -after.points)
    ctx.emit(
        loyalty_events.PointsRevoked(
            order_id=after.order_id,
            customer_id=after.customer_id,
            points=after.points,
            balance=balance,
        ),
        aggregate_id=after.order_id,
    )


HANDLERS: dict[type[Message], Handler] = {
    payment_events.PaymentCompleted: on_payment_completed,
    order_events.OrderCancelled: on_order_cancelled,
}
