"""Every saga ends: an order not final within the saga deadline is cancelled, the steps undo
what they did, and events that arrive after the deadline do no harm. The five services
in-process on a real nats-server."""

from __future__ import annotations

import asyncio
from typing import Any

from choreo.testing import wait_for
from services.audit import wait_for_quiescence
from services.order.domain import CancellationReason, OrderStatus
from shop.inventory.v1 import events_pb2 as inv
from shop.notification.v1 import events_pb2 as notification_events
from shop.order.v1 import events_pb2 as order_events
from shop.payment.v1 import events_pb2 as pay
from shop.shipping.v1 import events_pb2 as ship
from tests.services import emitted, wait_for_count
from tests.services.saga_harness import Saga, all_released, hanging, saga

__all__ = ["saga"]  # the fixture

DEADLINE = {"CHOREO_SAGA_DEADLINE_S": "2", "CHOREO_DEADLINE_SCAN_INTERVAL_S": "0.2"}


async def cancelled_at_deadline(s: Saga, order_id: str) -> None:
    async def cancelled() -> bool:
        order = await s.order(order_id)
        return order.status is OrderStatus.CANCELLED

    await wait_for(cancelled, timeout=15, what=f"order {order_id} cancelled at its deadline")
    order = await s.order(order_id)
    assert order.cancellation_reason is CancellationReason.DEADLINE_EXCEEDED


async def test_an_order_stuck_before_payment_is_cancelled_and_a_late_charge_is_given_back(
    saga: Saga, js: Any
) -> None:
    saga.env.update(DEADLINE)
    await saga.start("order", "inventory", "shipping", "notification")  # payment is down
    order_id = await saga.place()

    await cancelled_at_deadline(saga, order_id)
    # Cancelled in the order's database; the event leaves the outbox after that commit.
    await wait_for_count(js, order_events.OrderCancelled, 1)
    (event,) = await emitted(js, order_events.OrderCancelled)
    assert event.reason == order_events.CANCELLATION_REASON_DEADLINE_EXCEEDED

    async def released() -> bool:
        return all_released(await saga.stock())

    await wait_for(released, what="inventory to release the stock of the cancelled order")
    (release,) = await emitted(js, inv.InventoryReleased)
    assert release.reason == inv.RELEASE_REASON_ORDER_CANCELLED

    # Payment comes back and finds the late InventoryReserved and the OrderCancelled.
    await saga.start("payment")

    await quiet(saga, js)  # payment has settled the late charge, and everything it set off
    ledger = await saga.payments()
    assert ledger.charges.get(order_id, 0) <= 1
    assert ledger.refunds.get(order_id, 0) == ledger.charges.get(order_id, 0)
    assert (await saga.shipments()).bookings == {}
    assert await emitted(js, ship.ShipmentCreated) == []
    assert (await saga.order(order_id)).status is OrderStatus.CANCELLED
    assert all_released(await saga.stock())
    assert len(await emitted(js, notification_events.NotificationSent)) == 1


async def test_a_confirmed_order_with_a_hung_carrier_is_cancelled_and_the_late_booking_undone(
    saga: Saga, js: Any
) -> None:
    # The carrier hangs, and the timeouts are long: the booking step does not give up by
    # itself before the saga deadline, which is what has to end this saga.
    saga.env.update(
        DEADLINE,
        CHOREO_CALL_TIMEOUT_S="30",
        CHOREO_HANDLER_TIMEOUT_S="40",
        CHOREO_ACK_WAIT_S="60",
    )
    await saga.start()
    carrier_back = asyncio.Event()
    hanging(saga.provider(), "book", carrier_back)
    try:
        order_id = await saga.place()

        await cancelled_at_deadline(saga, order_id)

        async def compensated() -> bool:
            # The gateway records the refund before the relay publishes PaymentRefunded: wait
            # for the event too, not only the ledger.
            ledger = await saga.payments()
            return (
                ledger.refunds == {order_id: 1}
                and all_released(await saga.stock())
                and len(await emitted(js, pay.PaymentRefunded)) == 1
            )

        await wait_for(compensated, what="the refund and the release after the deadline")
        (refund,) = await emitted(js, pay.PaymentRefunded)
        assert "deadline" in refund.reason

        # The carrier answers the booking call it was hanging on: too late, refused.
        carrier_back.set()
        await quiet(saga, js)
        assert (await saga.shipments()).bookings == {}
        assert await emitted(js, ship.ShipmentCreated) == []
        assert (await saga.payments()).charges == {order_id: 1}
        assert (await saga.order(order_id)).status is OrderStatus.CANCELLED
        assert len(await emitted(js, notification_events.NotificationSent)) == 1
    finally:
        carrier_back.set()


async def test_a_late_booking_after_the_deadline_is_cancelled_and_announces_nothing(
    saga: Saga, js: Any
) -> None:
    saga.env.update(DEADLINE)
    await saga.start("order", "inventory", "payment", "notification")  # shipping is down
    order_id = await saga.place()

    await cancelled_at_deadline(saga, order_id)

    async def compensated() -> bool:
        ledger = await saga.payments()
        return ledger.refunds == {order_id: 1} and all_released(await saga.stock())

    await wait_for(compensated, what="the refund and the release after the deadline")

    # Shipping comes back to a late PaymentCompleted and the OrderCancelled, in either order:
    # whatever it books is cancelled at the carrier, and nothing else moves.
    await saga.start("shipping")
    await quiet(saga, js)
    shipments = await saga.shipments()
    assert shipments.bookings.get(order_id, 0) == shipments.cancelled.get(order_id, 0) <= 1
    assert (await saga.order(order_id)).status is OrderStatus.CANCELLED
    assert all_released(await saga.stock())
    assert (await saga.payments()).refunds == {order_id: 1}
    (told,) = await emitted(js, notification_events.NotificationSent)
    assert told.kind == notification_events.NOTIFICATION_KIND_ORDER_CANCELLED


async def quiet(saga: Saga, js: Any) -> None:
    """Wait until nothing is in flight: every consumer has acked everything and no outbox holds
    an event not yet published, at two looks in a row. Consumers alone are not enough: a
    handled event's answer (e.g. NotificationSent) leaves its outbox after the ack."""
    assert await wait_for_quiescence(js, saga.tmp_path, timeout_s=15), "never quiet"
