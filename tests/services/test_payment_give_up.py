"""Payment's give-up and deadline paths on their own, driven by published events on a real
nats-server: a bad InventoryReserved fails the payment instead of stranding the saga, and a
refund that finds the charge already voided records that refund instead of an alarm."""

from __future__ import annotations

from typing import Any

from choreo import dlq
from choreo.service import ServiceRuntime
from choreo.testing import wait_for
from services.payment import domain
from shop.common.v1 import money_pb2
from shop.order.v1 import events_pb2 as order_events
from shop.payment.v1 import events_pb2 as pay
from shop.shipping.v1 import events_pb2 as shipping_events
from tests.services import emitted, wait_for_count
from tests.services.test_payment_service import deliver, gateway, payment, reserved, start_payment

__all__ = ["payment", "start_payment"]  # the fixtures


async def test_an_unreadable_amount_gives_up_at_once_and_fails_the_payment(
    payment: ServiceRuntime, js: Any
) -> None:
    event = reserved()
    event.total.CopyFrom(money_pb2.Money(amount_minor=2500, currency_code="not-a-currency"))
    await deliver(js, event)  # the handler raises PermanentError on the amount

    await wait_for_count(js, pay.PaymentFailed, 1)
    (failed,) = await emitted(js, pay.PaymentFailed)
    assert failed.order_id == event.order_id
    assert failed.reason == pay.PAYMENT_FAILURE_REASON_GATEWAY_UNAVAILABLE
    assert (await gateway(payment).ledger_counts()).charges == {}

    async def filed() -> bool:
        return len(await dlq.list_dead_letters(js)) == 1

    await wait_for(filed, what="the give-up on record")
    (letter,) = await dlq.list_dead_letters(js)
    assert (letter.reason, letter.compensated, letter.alarm) == (dlq.REJECTED, True, False)


async def test_a_refund_after_a_void_records_the_void_s_refund_once(
    payment: ServiceRuntime, js: Any
) -> None:
    event = reserved()
    await deliver(js, event)
    await wait_for_count(js, pay.PaymentCompleted, 1)
    # A void of the charge key got there first (a deadline or give-up elsewhere).
    voided = await gateway(payment).void(domain.charge_key(event.order_id), order_id=event.order_id)

    await deliver(js, shipping_events.ShippingFailed(order_id=event.order_id, detail="AQ"))
    await wait_for_count(js, pay.PaymentRefunded, 1)
    (refunded,) = await emitted(js, pay.PaymentRefunded)
    assert refunded.refund_id == voided.refund_id
    assert (await gateway(payment).ledger_counts()).refunds == {event.order_id: 1}
    assert await dlq.list_dead_letters(js) == []


async def test_a_deadline_cancellation_refunds_a_completed_charge_and_voids_an_unanswered_one(
    payment: ServiceRuntime, js: Any
) -> None:
    charged = reserved()
    await deliver(js, charged)
    await wait_for_count(js, pay.PaymentCompleted, 1)
    for order_id in (charged.order_id, "ord-never-reserved"):
        await deliver(
            js,
            order_events.OrderCancelled(
                order_id=order_id,
                customer_id="cust-alice",
                reason=order_events.CANCELLATION_REASON_DEADLINE_EXCEEDED,
            ),
        )
    await wait_for_count(js, pay.PaymentRefunded, 1)

    # A late InventoryReserved for the order never charged takes no money: its key is void.
    late = reserved(order_id="ord-never-reserved")
    await deliver(js, late)

    async def settled() -> bool:
        return await _acked(payment, js)

    await wait_for(settled, what="payment to settle")
    ledger = await gateway(payment).ledger_counts()
    assert ledger.charges == {charged.order_id: 1}
    assert ledger.refunds == {charged.order_id: 1}
    assert [e.order_id for e in await emitted(js, pay.PaymentCompleted)] == [charged.order_id]
    assert await emitted(js, pay.PaymentFailed) == []


async def _acked(runtime: ServiceRuntime, js: Any) -> bool:
    for consumer in runtime.consumers:
        info = await js.consumer_info(consumer.subscription.stream, consumer.name)
        if info.num_pending or info.num_ack_pending:
            return False
    return True
