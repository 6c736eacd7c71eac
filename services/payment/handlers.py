"""Payment reactions: charge a reserved order, refund it when it cannot be shipped.

The gateway is called before the handler's transaction opens (the service's database takes
one writer at a time, and a gateway can be slow); what to do is decided from a short read
first, and the answer is recorded with a compare-and-set, so a racing duplicate records and
emits nothing. The gateway's idempotency keys make a repeated call return the first answer.
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
from choreo.inventory.v1 import events_pb2 as inventory_events
from choreo.payment.v1 import events_pb2 as payment_events
from choreo.shipping.v1 import events_pb2 as shipping_events
from choreo.store.port import Database
from services.payment import domain, mapping, store
from services.payment.gateway import (
    ChargeAlreadyRefunded,
    FakePaymentGateway,
    GatewayUnavailable,
    IdempotencyKeyReused,
    UnknownCharge,
)

log = logging.getLogger(__name__)


@dataclass
class Dependencies:
    gateway: FakePaymentGateway
    # Attached when the service starts; used for the short read before a gateway call.
    db: Database | None = None

    async def payment(self, order_id: str) -> domain.Payment | None:
        if self.db is None:
            raise RuntimeError("payment handlers used before the service started")
        async with self.db.read() as tx:
            return await store.load_payment(tx, order_id)


async def on_inventory_reserved(
    deps: Dependencies, ctx: HandlerContext, event: inventory_events.InventoryReserved
) -> None:
    order_id = event.order_id
    amount = mapping.money_from_proto(event.total, f"InventoryReserved {order_id} total")
    if not domain.should_charge(await deps.payment(order_id)):
        log.info("order %s already has a payment; not charging again", order_id)
        return
    try:
        result = await deps.gateway.charge(
            domain.charge_key(order_id),
            event.customer_id,
            amount,
            event.payment_token,
            order_id=order_id,
        )
    except GatewayUnavailable as exc:
        raise TransientError(f"charging order {order_id}: {exc}") from exc
    except IdempotencyKeyReused as exc:
        raise PermanentError(f"charging order {order_id}: {exc}") from exc
    payment = domain.decide_charge(order_id, event.customer_id, amount, result)
    if not await store.insert_payment(ctx.tx, payment, datetime.now(UTC)):
        return
    if payment.status is domain.PaymentStatus.COMPLETED:
        ctx.emit(
            payment_events.PaymentCompleted(
                order_id=order_id,
                payment_id=payment.payment_id,
                customer_id=payment.customer_id,
                amount=event.total,
                gateway_reference=payment.charge_id,
                shipping_address=event.shipping_address,
                lines=event.lines,
            ),
            aggregate_id=order_id,
        )
    else:
        ctx.emit(
            payment_events.PaymentFailed(
                order_id=order_id,
                customer_id=payment.customer_id,
                amount=event.total,
                reason=mapping.failure_reason(payment),
                detail=mapping.failure_detail(payment),
            ),
            aggregate_id=order_id,
        )


async def on_shipping_failed(
    deps: Dependencies, ctx: HandlerContext, event: shipping_events.ShippingFailed
) -> None:
    order_id = event.order_id
    decision = domain.decide_refund(await deps.payment(order_id))
    if isinstance(decision, domain.NoRefund):
        log.info("order %s: no refund (%s)", order_id, decision.why)
        return
    try:
        result = await deps.gateway.refund(decision.idempotency_key, decision.payment.charge_id)
    except GatewayUnavailable as exc:
        raise TransientError(f"refunding order {order_id}: {exc}") from exc
    except (IdempotencyKeyReused, UnknownCharge, ChargeAlreadyRefunded) as exc:
        raise PermanentError(f"refunding order {order_id}: {exc}") from exc
    if not await store.mark_refunded(ctx.tx, order_id, result.refund_id, datetime.now(UTC)):
        return
    payment = domain.refunded(decision.payment, result)
    ctx.emit(
        payment_events.PaymentRefunded(
            order_id=order_id,
            payment_id=payment.payment_id,
            refund_id=payment.refund_id,
            amount=mapping.money_to_proto(result.amount),
            reason=f"shipping failed: {event.detail}" if event.detail else "shipping failed",
        ),
        aggregate_id=order_id,
    )


DependentHandler = Callable[[Dependencies, HandlerContext, Any], Awaitable[None]]

HANDLERS: dict[type[Message], DependentHandler] = {
    inventory_events.InventoryReserved: on_inventory_reserved,
    shipping_events.ShippingFailed: on_shipping_failed,
}


def bind(deps: Dependencies) -> dict[type[Message], Handler]:
    """The handlers with their dependencies filled in, as the runtime calls them."""
    return {cls: functools.partial(handler, deps) for cls, handler in HANDLERS.items()}
