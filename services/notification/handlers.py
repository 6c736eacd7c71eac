"""Notification reactions: tell the customer once per final state of the order.

The customer hears of the final state the order service decided: "shipped" on OrderShipped,
"cancelled" on OrderCancelled. The order service is the single writer of the order's state, so
at most one of the two is ever published per order. Shipping's ShipmentCreated is not the
final state: an order the order service cancelled at its deadline while partitioned from the
broker may still be booked by shipping (then cancelled by its compensation), and telling the
customer "shipped" then would make two notifications for one final state (invariant 4).

The (order, kind) uniqueness in the store is what makes it once: a second OrderShipped or
OrderCancelled for the same order records nothing and emits nothing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message

from choreo.handling import Handler, HandlerContext
from services.catalog import Catalog
from services.notification import domain, mapping, store
from shop.order.v1 import events_pb2 as order_events

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dependencies:
    catalog: Catalog  # customers' preferred channels

    def channel_for(self, customer_id: str) -> domain.Channel:
        return domain.choose_channel(self.catalog.customers.get(customer_id))


async def _send(ctx: HandlerContext, notification: domain.Notification) -> None:
    if not await store.record_notification(ctx.tx, notification, datetime.now(UTC)):
        log.info("order %s was already told (%s)", notification.order_id, notification.kind)
        return
    ctx.emit(mapping.notification_sent(notification), aggregate_id=notification.order_id)


async def on_order_shipped(
    deps: Dependencies, ctx: HandlerContext, event: order_events.OrderShipped
) -> None:
    if not domain.should_tell_shipped(await store.notifications_for(ctx.tx, event.order_id)):
        # Not expected (the order service publishes one final state), kept as a guard.
        log.info("order %s: shipped after its cancellation was told; not told", event.order_id)
        return
    notification = domain.order_shipped(
        event.order_id,
        event.customer_id,
        event.carrier,
        event.tracking_id,
        deps.channel_for(event.customer_id),
    )
    await _send(ctx, notification)


async def on_order_cancelled(
    deps: Dependencies, ctx: HandlerContext, event: order_events.OrderCancelled
) -> None:
    reason = mapping.cancellation_reason(event.reason)
    notification = domain.order_cancelled(
        event.order_id,
        event.customer_id,
        reason,
        deps.channel_for(event.customer_id),
        # From the order service's record of a charge, never guessed from the reason.
        charged=event.charged,
    )
    await _send(ctx, notification)


DependentHandler = Callable[[Dependencies, HandlerContext, Any], Awaitable[None]]

HANDLERS: dict[type[Message], DependentHandler] = {
    order_events.OrderShipped: on_order_shipped,
    order_events.OrderCancelled: on_order_cancelled,
}


def bind(deps: Dependencies) -> dict[type[Message], Handler]:
    """The handlers with their dependencies filled in, as the runtime calls them."""
    return {cls: functools.partial(handler, deps) for cls, handler in HANDLERS.items()}
