"""Each service remembers that an order was cancelled, whatever the reason, and refuses a late
forward step for it; a forward step that got there first is undone when the cancellation
arrives (issue 22, defect 2). One service at a time on a real nats-server, driven by the
events that trigger it."""

from __future__ import annotations

from typing import Any

from choreo.service import ServiceRuntime
from choreo.testing import publish_event
from shop.inventory.v1 import events_pb2 as inv
from shop.inventory.v1 import inventory_service_pb2 as inv_pb
from shop.inventory.v1 import inventory_service_pb2_grpc as inv_grpc
from shop.order.v1 import events_pb2 as order_events
from shop.payment.v1 import events_pb2 as pay
from shop.payment.v1 import payment_service_pb2 as pay_pb
from shop.payment.v1 import payment_service_pb2_grpc as pay_grpc
from shop.shipping.v1 import events_pb2 as ship
from shop.shipping.v1 import shipping_service_pb2 as ship_pb
from shop.shipping.v1 import shipping_service_pb2_grpc as ship_grpc
from tests.services import channel, count, emitted, wait_for_count, wait_processed
from tests.services.test_inventory_service import inventory, levels, order, place, stub
from tests.services.test_payment_service import deliver as deliver_to_payment
from tests.services.test_payment_service import gateway, payment, reserved, start_payment
from tests.services.test_shipping_service import deliver as deliver_to_shipping
from tests.services.test_shipping_service import paid, provider, shipping, start_shipping

__all__ = [  # the fixtures
    "inventory",
    "payment",
    "shipping",
    "start_payment",
    "start_shipping",
    "stub",
]


def cancelled(
    order_id: str, reason: order_events.CancellationReason.ValueType
) -> order_events.OrderCancelled:
    return order_events.OrderCancelled(order_id=order_id, customer_id="cust-alice", reason=reason)


async def cancel(js: Any, event: order_events.OrderCancelled) -> None:
    await publish_event(js, event, aggregate_id=event.order_id)


async def test_shipping_books_nothing_for_an_order_it_heard_was_cancelled(
    shipping: ServiceRuntime, js: Any
) -> None:
    late = paid()
    await cancel(js, cancelled(late.order_id, order_events.CANCELLATION_REASON_PAYMENT_FAILED))
    await wait_processed(shipping, order_events.OrderCancelled, 1)
    await deliver_to_shipping(js, late)
    await wait_processed(shipping, pay.PaymentCompleted, 1)

    ledger = await provider(shipping).ledger_counts()
    assert ledger.bookings == {}
    assert await count(js, ship.ShipmentCreated) == 0
    async with channel(shipping.grpc_port) as ch:
        got = await ship_grpc.ShippingServiceStub(ch).GetShipment(
            ship_pb.GetShipmentRequest(order_id=late.order_id)
        )
    assert got.shipment.status == ship_pb.SHIPMENT_STATUS_FAILED


async def test_a_booking_made_before_the_cancellation_is_cancelled_and_recorded_so(
    shipping: ServiceRuntime, js: Any
) -> None:
    event = paid()
    await deliver_to_shipping(js, event)
    await wait_for_count(js, ship.ShipmentCreated, 1)
    await cancel(js, cancelled(event.order_id, order_events.CANCELLATION_REASON_DEADLINE_EXCEEDED))
    await wait_processed(shipping, order_events.OrderCancelled, 1)

    ledger = await provider(shipping).ledger_counts()
    assert (ledger.bookings, ledger.cancelled) == ({event.order_id: 1}, {event.order_id: 1})
    async with channel(shipping.grpc_port) as ch:
        got = await ship_grpc.ShippingServiceStub(ch).GetShipment(
            ship_pb.GetShipmentRequest(order_id=event.order_id)
        )
    assert got.shipment.status == ship_pb.SHIPMENT_STATUS_FAILED
    assert "cancelled" in got.shipment.failure_detail


async def test_payment_charges_nothing_for_an_order_it_heard_was_cancelled(
    payment: ServiceRuntime, js: Any
) -> None:
    late = reserved()
    await cancel(js, cancelled(late.order_id, order_events.CANCELLATION_REASON_SHIPPING_FAILED))
    await wait_processed(payment, order_events.OrderCancelled, 1)
    await deliver_to_payment(js, late)
    await wait_processed(payment, inv.InventoryReserved, 1)

    assert (await gateway(payment).ledger_counts()).charges == {}
    assert await count(js, pay.PaymentCompleted) == 0
    async with channel(payment.grpc_port) as ch:
        got = await pay_grpc.PaymentServiceStub(ch).GetPayment(
            pay_pb.GetPaymentRequest(order_id=late.order_id)
        )
    assert got.payment.status == pay_pb.PAYMENT_STATUS_FAILED


async def test_inventory_reserves_nothing_for_an_order_it_heard_was_cancelled(
    inventory: ServiceRuntime, js: Any, stub: inv_grpc.InventoryServiceAsyncStub
) -> None:
    late = order(("SKU-B", 3))
    await cancel(js, cancelled(late.order_id, order_events.CANCELLATION_REASON_PAYMENT_FAILED))
    await wait_processed(inventory, order_events.OrderCancelled, 1)
    await place(js, late)
    await wait_processed(inventory, order_events.OrderCreated, 1)

    assert await levels(stub, "SKU-B") == (10, 0, 0)
    assert await count(js, inv.InventoryReserved) == 0


async def test_stock_shipped_out_for_an_order_cancelled_afterwards_is_returned(
    inventory: ServiceRuntime, js: Any, stub: inv_grpc.InventoryServiceAsyncStub
) -> None:
    event = order(("SKU-B", 3))
    await place(js, event)
    await wait_for_count(js, inv.InventoryReserved, 1)
    await publish_event(
        js,
        ship.ShipmentCreated(order_id=event.order_id, shipment_id="shp-1"),
        aggregate_id=event.order_id,
    )
    await wait_for_count(js, inv.InventoryShipped, 1)
    assert await levels(stub, "SKU-B") == (7, 0, 3)

    for _ in range(2):  # a redelivered cancellation returns nothing twice
        await cancel(
            js, cancelled(event.order_id, order_events.CANCELLATION_REASON_DEADLINE_EXCEEDED)
        )
    await wait_processed(inventory, order_events.OrderCancelled, 2)

    assert await levels(stub, "SKU-B") == (10, 0, 0)
    (returned,) = await emitted(js, inv.InventoryReleased)
    assert returned.reason == inv.RELEASE_REASON_ORDER_CANCELLED
    got = await stub.GetReservation(inv_pb.GetReservationRequest(order_id=event.order_id))
    assert got.reservation.status == inv_pb.RESERVATION_STATUS_RELEASED
