"""Notification as the flow table has it: one message per final state, on the right channel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from choreo.broker import EmbeddedBroker
from choreo.service import ServiceRuntime
from choreo.testing import publish_event
from services.notification.service import build
from services.settings import SagaSettings
from shop.notification.v1 import events_pb2 as note
from shop.notification.v1 import notification_service_pb2 as pb
from shop.notification.v1 import notification_service_pb2_grpc as pb_grpc
from shop.order.v1 import events_pb2 as order_events
from shop.shipping.v1 import events_pb2 as ship
from tests.services import (
    channel,
    count,
    emitted,
    runtime_settings,
    wait_for_count,
    wait_processed,
    wait_published,
)


@pytest.fixture
async def notification(broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[ServiceRuntime]:
    settings = runtime_settings("notification", broker, tmp_path)
    runtime = ServiceRuntime(build(settings, SagaSettings(data_dir=tmp_path)), settings)
    await runtime.start()
    yield runtime
    await runtime.stop()


@pytest.fixture
async def stub(
    notification: ServiceRuntime,
) -> AsyncIterator[pb_grpc.NotificationServiceAsyncStub]:
    async with channel(notification.grpc_port) as ch:
        yield pb_grpc.NotificationServiceStub(ch)


def shipped(order_id: str, customer_id: str = "cust-alice") -> order_events.OrderShipped:
    """The order service decided the order shipped: the one event "shipped" is told on."""
    return order_events.OrderShipped(
        order_id=order_id,
        shipment_id="shp-1",
        tracking_id="DHL000000000042",
        carrier="DHL",
        customer_id=customer_id,
    )


def booked(order_id: str, customer_id: str = "cust-alice") -> ship.ShipmentCreated:
    """Shipping booked the shipment: not a final state of the order, so nobody is told."""
    return ship.ShipmentCreated(
        order_id=order_id,
        shipment_id="shp-1",
        tracking_id="DHL000000000042",
        carrier="DHL",
        customer_id=customer_id,
    )


def cancelled(
    order_id: str, customer_id: str = "cust-bob", *, charged: bool = True
) -> order_events.OrderCancelled:
    return order_events.OrderCancelled(
        order_id=order_id,
        customer_id=customer_id,
        reason=order_events.CANCELLATION_REASON_SHIPPING_FAILED,
        charged=charged,
    )


async def deliver(js: Any, event: Any, **envelope: Any) -> None:
    await publish_event(js, event, aggregate_id=event.order_id, **envelope)


async def test_one_notification_per_final_state_even_when_the_trigger_is_delivered_twice(
    notification: ServiceRuntime, js: Any
) -> None:
    # Once as a redelivery of the same event, once as a new event about the same shipment.
    await deliver(js, shipped("ord-1"), event_id="evt-ship-1")
    await deliver(js, shipped("ord-1"), event_id="evt-ship-1", msg_id="resent-by-relay")
    await deliver(js, shipped("ord-1"))
    await wait_for_count(js, note.NotificationSent, 1)
    await wait_processed(notification, order_events.OrderShipped, 3)
    await wait_published(notification)

    assert await count(js, note.NotificationSent) == 1
    (sent,) = await emitted(js, note.NotificationSent)
    assert sent.order_id == "ord-1"
    assert sent.customer_id == "cust-alice"
    assert sent.kind == note.NOTIFICATION_KIND_ORDER_SHIPPED
    assert sent.channel == note.CHANNEL_EMAIL
    assert "DHL000000000042" in sent.message and "with DHL" in sent.message


async def test_a_shipment_booked_for_an_order_the_order_service_cancelled_is_not_told(
    notification: ServiceRuntime, js: Any
) -> None:
    """Invariant 4 under a partition: the order service cancelled the order at its deadline
    while shipping still booked it. ShipmentCreated is not the order's final state, so only
    the cancellation is told; the order service never publishes OrderShipped for it."""
    assert ship.ShipmentCreated not in notification.definition.handlers
    # Shipping's event gets through first (the order service is the one cut off); before the
    # fix, notification told "shipped" here, then "cancelled" on the heal.
    await deliver(js, booked("ord-part"))  # stored on the broker before the next publish
    await deliver(js, cancelled("ord-part"))
    await wait_for_count(js, note.NotificationSent, 1)
    await wait_processed(notification, order_events.OrderCancelled, 1)
    await wait_published(notification)

    (sent,) = await emitted(js, note.NotificationSent)
    assert (sent.order_id, sent.kind) == ("ord-part", note.NOTIFICATION_KIND_ORDER_CANCELLED)


async def test_shipped_is_never_told_after_cancelled(notification: ServiceRuntime, js: Any) -> None:
    # The order service publishes one final state; should both arrive, the first one told wins.
    await deliver(js, cancelled("ord-both"))
    await wait_for_count(js, note.NotificationSent, 1)
    await deliver(js, shipped("ord-both"))
    await wait_processed(notification, order_events.OrderShipped, 1)
    await wait_published(notification)

    (sent,) = await emitted(js, note.NotificationSent)
    assert sent.kind == note.NOTIFICATION_KIND_ORDER_CANCELLED


async def test_a_cancellation_is_told_on_the_customers_preferred_channel(
    notification: ServiceRuntime, js: Any
) -> None:
    await deliver(js, cancelled("ord-2"))
    await deliver(js, cancelled("ord-2"))
    await wait_for_count(js, note.NotificationSent, 1)
    await wait_processed(notification, order_events.OrderCancelled, 2)
    await wait_published(notification)

    (sent,) = await emitted(js, note.NotificationSent)
    assert sent.kind == note.NOTIFICATION_KIND_ORDER_CANCELLED
    assert sent.customer_id == "cust-bob"
    assert sent.channel == note.CHANNEL_SMS  # cust-bob prefers SMS in the catalog
    assert "refunded" in sent.message


async def test_a_cancellation_without_a_charge_does_not_mention_a_refund(
    notification: ServiceRuntime, js: Any
) -> None:
    await deliver(js, cancelled("ord-3", charged=False))
    await wait_for_count(js, note.NotificationSent, 1)
    (sent,) = await emitted(js, note.NotificationSent)
    assert sent.order_id == "ord-3"
    assert "refund" not in sent.message


async def test_list_notifications_of_one_saga_and_by_customer_in_pages(
    notification: ServiceRuntime, js: Any, stub: pb_grpc.NotificationServiceAsyncStub
) -> None:
    for i in range(5):
        await deliver(js, shipped(f"ord-p{i}", customer_id="cust-carol"))
    await deliver(js, cancelled("ord-other", customer_id="cust-alice"))
    await wait_for_count(js, note.NotificationSent, 6)

    by_order = await stub.ListNotifications(pb.ListNotificationsRequest(order_id="ord-p3"))
    assert [n.order_id for n in by_order.notifications] == ["ord-p3"]
    assert by_order.notifications[0].sent_at.seconds > 0
    assert by_order.next_page_token == ""

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await stub.ListNotifications(
            pb.ListNotificationsRequest(customer_id="cust-carol", page_size=2, page_token=token)
        )
        pages += 1
        seen += [n.order_id for n in page.notifications]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == [f"ord-p{i}" for i in range(5)]
    assert pages == 3


async def test_list_notifications_without_a_filter_lists_the_most_recent(
    notification: ServiceRuntime, js: Any, stub: pb_grpc.NotificationServiceAsyncStub
) -> None:
    for i in range(3):
        await deliver(js, shipped(f"ord-r{i}", customer_id="cust-carol"))
        await wait_for_count(js, note.NotificationSent, i + 1)  # sent one after the other
    recent = await stub.ListNotifications(pb.ListNotificationsRequest(page_size=2))
    assert [n.order_id for n in recent.notifications] == ["ord-r2", "ord-r1"]
    rest = await stub.ListNotifications(
        pb.ListNotificationsRequest(page_size=2, page_token=recent.next_page_token)
    )
    assert ([n.order_id for n in rest.notifications], rest.next_page_token) == (["ord-r0"], "")


async def test_list_notifications_with_a_foreign_token_is_invalid(
    stub: pb_grpc.NotificationServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as bad_token:
        await stub.ListNotifications(
            pb.ListNotificationsRequest(order_id="ord-1", page_token="not-a-token")
        )
    assert bad_token.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (bad_token.value.details() or "")
