"""Shipping reaction: book a paid order's shipment with the provider.

The provider is called before the handler's transaction opens (it can be slow and the
service's database takes one writer at a time); its idempotency key makes a retried call
return the first booking or refusal, and the insert records only the first answer.
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
from choreo.handling import Handler, HandlerContext
from choreo.payment.v1 import events_pb2 as payment_events
from choreo.shipping.v1 import events_pb2 as shipping_events
from choreo.store.port import Database
from services.shipping import domain, mapping, store
from services.shipping.provider import (
    FakeShippingProvider,
    IdempotencyKeyReused,
    ProviderUnavailable,
    Unserviceable,
)

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


async def on_payment_completed(
    deps: Dependencies, ctx: HandlerContext, event: payment_events.PaymentCompleted
) -> None:
    order_id = event.order_id
    destination = mapping.address_from_proto(event.shipping_address)
    if not domain.should_book(await deps.shipment(order_id)):
        log.info("order %s already has a shipment; not booking again", order_id)
        return
    try:
        booking = await deps.provider.book(domain.booking_key(order_id), order_id, destination)
    except ProviderUnavailable as exc:
        raise TransientError(f"booking order {order_id}: {exc}") from exc
    except IdempotencyKeyReused as exc:
        raise PermanentError(f"booking order {order_id}: {exc}") from exc
    except Unserviceable as refusal:
        shipment = domain.refused(order_id, destination, refusal.reason)
    else:
        shipment = domain.booked(order_id, destination, booking)
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
            ),
            aggregate_id=order_id,
        )
    else:
        ctx.emit(
            shipping_events.ShippingFailed(
                order_id=order_id,
                customer_id=event.customer_id,
                payment_id=event.payment_id,
                reason=mapping.failure_reason(shipment),
                detail=shipment.failure_reason,
            ),
            aggregate_id=order_id,
        )


DependentHandler = Callable[[Dependencies, HandlerContext, Any], Awaitable[None]]

HANDLERS: dict[type[Message], DependentHandler] = {
    payment_events.PaymentCompleted: on_payment_completed,
}


def bind(deps: Dependencies) -> dict[type[Message], Handler]:
    """The handlers with their dependencies filled in, as the runtime calls them."""
    return {cls: functools.partial(handler, deps) for cls, handler in HANDLERS.items()}
