"""Payment reactions: charge a reserved order, refund it when it cannot be shipped.

The gateway is called before the handler's transaction opens (the service's database takes
one writer at a time, and a gateway can be slow), within the call timeout; what to do is
decided from a short read first, and the answer is recorded with a compare-and-set, so a racing
duplicate records and emits nothing. The gateway's idempotency keys make a repeated call return
the first answer.

The payment token arrives sealed for this service (``services/payment_token.py``): it is
opened with the service's private key just before the gateway call and lives nowhere else. A
token that cannot be opened is a ``PermanentError`` naming why, so the step gives up through
the path below (dead letter, ``PaymentFailed``, compensations).

When charging gives up (the gateway did not answer within the retry budget, or the step was
rejected), the charge key is voided at the gateway first, so money it may have taken is given
back and a charge still in flight takes none, then ``PaymentFailed`` is emitted and the usual
compensations run. An order cancelled at its saga deadline is compensated the same way.

A charge found again by its key (a retry, or an operator's replay of a dead letter) is trusted
only as far as its *current* status: one the gateway has since voided or refunded fails the
payment (``PaymentFailed``), never completes it. And every cancellation is remembered (a
tombstone): a late or replayed ``InventoryReserved`` for a cancelled order charges nothing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message

from choreo import dlq
from choreo.errors import PermanentError, TransientError
from choreo.handling import GaveUp, GiveUpHandler, Handler, HandlerContext
from choreo.sealing import Opener
from choreo.store.port import Database
from services import payment_token
from services.payment import domain, mapping, store
from services.payment.gateway import (
    ChargeAlreadyRefunded,
    FakePaymentGateway,
    GatewayUnavailable,
    IdempotencyKeyReused,
    UnknownCharge,
)
from services.values import Money
from shop.inventory.v1 import events_pb2 as inventory_events
from shop.order.v1 import events_pb2 as order_events
from shop.payment.v1 import events_pb2 as payment_events
from shop.shipping.v1 import events_pb2 as shipping_events

log = logging.getLogger(__name__)


@dataclass
class Dependencies:
    gateway: FakePaymentGateway
    # Opens the sealed payment token; the only holder of the private key.
    token_key: Opener
    # Attached when the service starts; used for the short read before a gateway call.
    db: Database | None = None

    async def payment(self, order_id: str) -> domain.Payment | None:
        if self.db is None:
            raise RuntimeError("payment handlers used before the service started")
        async with self.db.read() as tx:
            return await store.load_payment(tx, order_id)

    async def payment_and_tombstone(self, order_id: str) -> tuple[domain.Payment | None, bool]:
        """The order's payment, and whether it was cancelled: one short read."""
        if self.db is None:
            raise RuntimeError("payment handlers used before the service started")
        async with self.db.read() as tx:
            return await store.load_payment(tx, order_id), await store.is_cancelled(tx, order_id)


async def on_inventory_reserved(
    deps: Dependencies, ctx: HandlerContext, event: inventory_events.InventoryReserved
) -> None:
    order_id = event.order_id
    amount = mapping.money_from_proto(event.total, f"InventoryReserved {order_id} total")
    existing, cancelled = await deps.payment_and_tombstone(order_id)
    if not domain.should_charge(existing):
        log.info("order %s already has a payment; not charging again", order_id)
        return
    if cancelled:
        # The cancellation got here first: charge nothing. The key is voided, so a charge an
        # earlier attempt may have taken is given back and one still in flight takes nothing.
        log.info("order %s is cancelled; not charging", order_id)
        await _void_for_cancelled(deps, ctx, order_id, event.customer_id, amount)
        return
    token = payment_token.open_token(deps.token_key, order_id, event.payment_token)
    try:
        result = await ctx.call(
            deps.gateway.charge(
                domain.charge_key(order_id),
                event.customer_id,
                amount,
                token,
                order_id=order_id,
            ),
            f"charging order {order_id}",
        )
    except GatewayUnavailable as exc:
        raise TransientError(f"charging order {order_id}: {exc}") from exc
    except IdempotencyKeyReused as exc:
        raise PermanentError(f"charging order {order_id}: {exc}") from exc
    payment = domain.decide_charge(order_id, event.customer_id, amount, result)
    if await store.is_cancelled(ctx.tx, order_id):
        # Cancelled while the gateway was answering: decide again, from the tombstone.
        raise TransientError(f"order {order_id} was cancelled while charging; deciding again")
    if not await store.insert_payment(ctx.tx, payment, datetime.now(UTC)):
        return
    if result.approved and not result.kept:
        log.warning(
            "order %s: charge %s was since %s (refund %s); the payment fails",
            order_id,
            result.charge_id,
            result.status.value.lower(),
            result.refund_id,
        )
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
    why = f"shipping failed: {event.detail}" if event.detail else "shipping failed"
    await _refund(deps, ctx, decision, why)


async def _refund(
    deps: Dependencies, ctx: HandlerContext, decision: domain.RefundDue, why: str
) -> None:
    order_id = decision.payment.order_id
    try:
        result = await ctx.call(
            deps.gateway.refund(decision.idempotency_key, decision.payment.charge_id),
            f"refunding order {order_id}",
        )
    except GatewayUnavailable as exc:
        raise TransientError(f"refunding order {order_id}: {exc}") from exc
    except ChargeAlreadyRefunded:
        # A void (a give-up or the deadline) refunded the charge first: voiding again is
        # idempotent and names that refund, which is the answer.
        voided = await _void(deps, ctx, order_id, domain.charge_key(order_id))
        amount = voided.amount or decision.payment.amount
        result = domain.RefundResult(voided.refund_id, voided.charge_id, amount)
    except (IdempotencyKeyReused, UnknownCharge) as exc:
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
            reason=why,
        ),
        aggregate_id=order_id,
    )


async def _void(
    deps: Dependencies, ctx: HandlerContext, order_id: str, key: str
) -> domain.VoidResult:
    try:
        return await ctx.call(
            deps.gateway.void(key, order_id=order_id), f"voiding the charge of order {order_id}"
        )
    except GatewayUnavailable as exc:
        raise TransientError(f"voiding the charge of order {order_id}: {exc}") from exc


async def _record_void(
    ctx: HandlerContext, payment: domain.Payment, result: domain.VoidResult, why: str
) -> bool:
    """Record a voided charge; True when it is this order's payment now. A charge that
    completed in the meantime and was refunded by the void is recorded as refunded."""
    now = datetime.now(UTC)
    if await store.insert_payment(ctx.tx, payment, now):
        if result.refund_id:
            ctx.emit(_refunded_event(payment, result, why), aggregate_id=payment.order_id)
        return True
    if result.refund_id and await store.mark_refunded(
        ctx.tx, payment.order_id, result.refund_id, now
    ):
        ctx.emit(_refunded_event(payment, result, why), aggregate_id=payment.order_id)
    return False


def _refunded_event(
    payment: domain.Payment, result: domain.VoidResult, why: str
) -> payment_events.PaymentRefunded:
    return payment_events.PaymentRefunded(
        order_id=payment.order_id,
        payment_id=payment.payment_id,
        refund_id=result.refund_id,
        amount=mapping.money_to_proto(result.amount or payment.amount),
        reason=why,
    )


async def give_up_charge(
    deps: Dependencies,
    ctx: HandlerContext,
    event: inventory_events.InventoryReserved,
    why: GaveUp,
) -> None:
    """Charging gave up: void the key (give back whatever was taken), then fail the payment."""
    order_id = event.order_id
    try:
        amount = mapping.money_from_proto(event.total, f"InventoryReserved {order_id} total")
    except PermanentError:
        amount = Money(0, deps.gateway.currency)  # the event is unusable; nothing was charged
    result = await _void(deps, ctx, order_id, domain.charge_key(order_id))
    if why.reason == dlq.REJECTED:
        # Refused before or by the gateway (e.g. a payment token that cannot be opened).
        detail = f"charging was refused; charge voided ({why.reason}: {why.detail})"
    else:
        detail = f"the payment gateway did not answer; charge voided ({why.reason}: {why.detail})"
    payment = domain.voided(order_id, event.customer_id, amount, result, domain.GAVE_UP)
    # Money the gateway took is given back by the void itself: PaymentFailed says "nothing
    # charged", which after the void is true. Not recorded: the order got an answer already.
    now = datetime.now(UTC)
    if not await store.insert_payment(ctx.tx, payment, now):
        return
    ctx.emit(
        payment_events.PaymentFailed(
            order_id=order_id,
            customer_id=event.customer_id,
            amount=event.total,
            reason=payment_events.PAYMENT_FAILURE_REASON_GATEWAY_UNAVAILABLE,
            detail=detail[:500],
        ),
        aggregate_id=order_id,
    )


async def _void_for_cancelled(
    deps: Dependencies, ctx: HandlerContext, order_id: str, customer_id: str, amount: Money
) -> None:
    """A cancelled order with no recorded payment: void its charge key and record that."""
    result = await _void(deps, ctx, order_id, domain.charge_key(order_id))
    payment = domain.voided(order_id, customer_id, amount, result, domain.ORDER_CANCELLED)
    await _record_void(ctx, payment, result, "order cancelled")


async def on_order_cancelled(
    deps: Dependencies, ctx: HandlerContext, event: order_events.OrderCancelled
) -> None:
    """Remember the cancellation (any reason), so a late InventoryReserved charges nothing.
    An order cancelled at its deadline: void an unanswered charge, refund a completed one."""
    reason = order_events.CancellationReason.Name(event.reason)
    if domain.compensates_cancellation(reason):
        await _compensate_cancellation(deps, ctx, event)
    # After the gateway calls (they come before the transaction is touched).
    await store.remember_cancelled(ctx.tx, event.order_id, reason, datetime.now(UTC))


async def _compensate_cancellation(
    deps: Dependencies, ctx: HandlerContext, event: order_events.OrderCancelled
) -> None:
    order_id = event.order_id
    decision = domain.decide_cancellation(order_id, await deps.payment(order_id))
    why = f"order cancelled at its deadline: {event.detail}" if event.detail else "deadline"
    if isinstance(decision, domain.NoRefund):
        log.info("order %s: no refund (%s)", order_id, decision.why)
    elif isinstance(decision, domain.RefundDue):
        await _refund(deps, ctx, decision, why)
    else:
        result = await _void(deps, ctx, order_id, decision.idempotency_key)
        amount = Money(0, deps.gateway.currency)
        payment = domain.voided(order_id, event.customer_id, amount, result, domain.ORDER_CANCELLED)
        await _record_void(ctx, payment, result, why)


DependentHandler = Callable[[Dependencies, HandlerContext, Any], Awaitable[None]]

DependentGiveUp = Callable[[Dependencies, HandlerContext, Any, GaveUp], Awaitable[None]]

HANDLERS: dict[type[Message], DependentHandler] = {
    inventory_events.InventoryReserved: on_inventory_reserved,
    shipping_events.ShippingFailed: on_shipping_failed,
    order_events.OrderCancelled: on_order_cancelled,
}

# Steps with a business failure event: when they give up, they emit it. A refund that gives up
# has none (nothing undoes a failed undo): its dead letter raises an alarm instead.
GIVE_UPS: dict[type[Message], DependentGiveUp] = {
    inventory_events.InventoryReserved: give_up_charge,
}


def bind(deps: Dependencies) -> dict[type[Message], Handler]:
    """The handlers with their dependencies filled in, as the runtime calls them."""
    return {cls: functools.partial(handler, deps) for cls, handler in HANDLERS.items()}


def bind_give_ups(deps: Dependencies) -> dict[type[Message], GiveUpHandler]:
    return {cls: functools.partial(give_up, deps) for cls, give_up in GIVE_UPS.items()}
