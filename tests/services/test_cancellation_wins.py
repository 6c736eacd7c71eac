"""A cancellation wins against a late forward step in every service (issue 22, defect 2).

While the order service cannot publish, its deadline scan cancels a PENDING order locally:
``OrderCancelled(DEADLINE_EXCEEDED)`` queues behind the unpublished ``OrderCreated`` and both go
out on recovery. Each service's consumer of the order stream then sees the cancellation at its
own pace; where a forward step gets there first (reserved, charged, booked, shipped out), the
cancellation undoes it when it arrives (refund, booking cancelled and recorded so, stock
returned), and where the cancellation gets there first, the forward step does nothing.

The five services in-process on a real nats-server. The order service runs alone first, so
its ``OrderCreated`` and ``OrderCancelled`` are both in the stream before anyone reacts (as
after a partition); the test then holds inventory's, payment's and shipping's
``OrderCancelled`` back (a lagging consumer: the handler asks to be retried) until the
forward saga has booked the shipment and shipped the stock out, the interleaving of the issue.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from choreo.errors import TransientError
from choreo.testing import wait_for
from services.inventory import handlers as inventory_handlers
from services.order.domain import CancellationReason, OrderStatus
from services.payment import handlers as payment_handlers
from services.shipping import handlers as shipping_handlers
from shop.inventory.v1 import events_pb2 as inv
from shop.notification.v1 import events_pb2 as notification_events
from shop.order.v1 import events_pb2 as order_events
from shop.payment.v1 import events_pb2 as pay
from shop.shipping.v1 import events_pb2 as ship
from shop.shipping.v1 import shipping_service_pb2 as ship_pb
from shop.shipping.v1 import shipping_service_pb2_grpc as ship_grpc
from tests.services import channel, emitted, wait_for_count
from tests.services.saga_harness import Saga, all_released, saga
from tests.services.test_replay_after_lost_compensation import audited, quiet

__all__ = ["saga"]  # the fixture

DEADLINE = {
    "CHOREO_SAGA_DEADLINE_S": "1",
    "CHOREO_DEADLINE_SCAN_INTERVAL_S": "0.2",
    # A held-back OrderCancelled is retried until the test lets it through, not given up on.
    "CHOREO_MAX_DELIVERIES": "2000",
}


def held_back(opened: asyncio.Event, handler: Any) -> Any:
    """``handler`` as a lagging consumer runs it: not before ``opened`` is set."""

    async def lagging(*args: Any) -> None:
        if not opened.is_set():
            raise TransientError("held back by the test: this consumer is lagging")
        await handler(*args)

    return lagging


async def test_a_deadline_cancellation_that_arrives_late_undoes_a_shipped_saga(
    saga: Saga, js: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    saga.env.update(DEADLINE)
    late = asyncio.Event()
    cancelled = order_events.OrderCancelled
    for module in (inventory_handlers, payment_handlers, shipping_handlers):
        monkeypatch.setitem(module.HANDLERS, cancelled, held_back(late, module.HANDLERS[cancelled]))

    # The order service alone: the order is placed, nobody reacts, its deadline cancels it.
    await saga.start("order")
    order_id = await saga.place()

    async def cancelled_locally() -> bool:
        return (await saga.order(order_id)).status is OrderStatus.CANCELLED

    await wait_for(cancelled_locally, what="the deadline to cancel the order")
    await wait_for_count(js, order_events.OrderCancelled, 1)

    # Notification hears of the cancellation and tells the customer.
    await saga.start("notification")
    await wait_for_count(js, notification_events.NotificationSent, 1)

    # The late OrderCreated wins the race everywhere else: reserved, charged, booked, shipped out.
    await saga.start("inventory", "payment", "shipping")
    await wait_for_count(js, inv.InventoryShipped, 1)
    assert (await saga.payments()).charges == {order_id: 1}
    assert (await saga.shipments()).bookings == {order_id: 1}

    # Then the cancellation reaches them.
    late.set()
    await quiet(saga, js)

    order = await saga.order(order_id)
    assert order.status is OrderStatus.CANCELLED
    assert order.cancellation_reason is CancellationReason.DEADLINE_EXCEEDED
    # The charge is refunded exactly once.
    ledger = await saga.payments()
    assert (ledger.charges, ledger.refunds) == ({order_id: 1}, {order_id: 1})
    assert len(await emitted(js, pay.PaymentRefunded)) == 1
    # The booking is cancelled at the carrier, and the shipping service says so.
    shipments = await saga.shipments()
    assert (shipments.bookings, shipments.cancelled) == ({order_id: 1}, {order_id: 1})
    async with channel(saga.runtimes["shipping"].grpc_port) as ch:
        got = await ship_grpc.ShippingServiceStub(ch).GetShipment(
            ship_pb.GetShipmentRequest(order_id=order_id)
        )
    assert got.shipment.status != ship_pb.SHIPMENT_STATUS_CREATED
    assert "cancel" in got.shipment.failure_detail
    # The stock that shipped out came back: nothing reserved or shipped for a cancelled order.
    levels = await saga.stock()
    assert all(level.is_conserved and level.shipped == 0 for level in levels)
    assert all_released(levels)
    (returned,) = await emitted(js, inv.InventoryReleased)
    assert returned.reason == inv.RELEASE_REASON_ORDER_CANCELLED
    # The customer was told once, that the order was cancelled.
    (told,) = await emitted(js, notification_events.NotificationSent)
    assert told.kind == notification_events.NOTIFICATION_KIND_ORDER_CANCELLED

    report = await audited(saga, js)
    assert report.violations == []


async def test_a_cancellation_that_arrives_first_stops_every_forward_step(
    saga: Saga, js: Any
) -> None:
    """The other order of the same race: every service hears of the cancellation before the
    late OrderCreated's chain reaches it, so nothing is reserved, charged, booked or told."""
    saga.env.update(DEADLINE)
    await saga.start("order")
    order_id = await saga.place()
    await wait_for_count(js, order_events.OrderCancelled, 1)

    await saga.start("notification", "payment", "shipping")
    await wait_for_count(js, notification_events.NotificationSent, 1)
    await quiet(saga, js)  # payment and shipping have their tombstones
    await saga.start("inventory")
    await quiet(saga, js)

    ledger = await saga.payments()
    assert ledger.charges.get(order_id, 0) == ledger.refunds.get(order_id, 0) <= 1
    shipments = await saga.shipments()
    assert shipments.bookings.get(order_id, 0) == shipments.cancelled.get(order_id, 0)
    assert await emitted(js, ship.ShipmentCreated) == []
    assert all_released(await saga.stock())
    (told,) = await emitted(js, notification_events.NotificationSent)
    assert told.kind == notification_events.NOTIFICATION_KIND_ORDER_CANCELLED
    report = await audited(saga, js)
    assert report.violations == []
