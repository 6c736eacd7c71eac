"""The order service on the real runtime: a real nats-server, a SQLite file, a gRPC channel.

Read like the flow table: "when PaymentCompleted arrives, the order is confirmed and
OrderConfirmed is published once".
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
import pytest
from google.protobuf.message import Message

from choreo import dlq, subjects
from choreo.broker import EmbeddedBroker
from choreo.envelope import Envelope
from choreo.errors import ConfigurationError
from choreo.grpc_errors import field_violations
from choreo.service import ServiceRuntime
from choreo.settings import RuntimeSettings
from choreo.streamread import read_stream
from choreo.testing import publish_event, stream_count, wait_for
from services import payment_token
from services.notification.service import build as build_notification
from services.order.service import build, cancel_overdue
from services.settings import SagaSettings
from shop.common.v1 import address_pb2, order_line_pb2
from shop.inventory.v1 import events_pb2 as inventory_events
from shop.notification.v1 import events_pb2 as notification_events
from shop.order.v1 import events_pb2 as order_events
from shop.order.v1 import order_service_pb2 as pb
from shop.order.v1 import order_service_pb2_grpc as pb_grpc
from shop.payment.v1 import events_pb2 as payment_events
from shop.shipping.v1 import events_pb2 as shipping_events
from tests.services import emitted, runtime_settings, wait_for_count

ORDER_STREAM = "SHOP_ORDER"
CREATED = "shop.order.v1.OrderCreated"
CONFIRMED = "shop.order.v1.OrderConfirmed"
SHIPPED = "shop.order.v1.OrderShipped"
CANCELLED = "shop.order.v1.OrderCancelled"

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    Stub = pb_grpc.OrderServiceAsyncStub


@pytest.fixture
async def runtime(broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[ServiceRuntime]:
    settings = RuntimeSettings(
        service="order",
        nats_url=broker.url,
        database_url=f"sqlite:///{tmp_path}/order.db",
        grpc_port=0,
        fetch_timeout_s=0.2,
        relay_sweep_interval_s=0.2,
    )
    service = ServiceRuntime(build(settings, SagaSettings(data_dir=tmp_path)), settings)
    await service.start()
    yield service
    await service.stop(grace_s=1.0)


@pytest.fixture
async def stub(runtime: ServiceRuntime) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
        yield cast("Stub", pb_grpc.OrderServiceStub(channel))


def place_request(key: str | None = None, **changes: Any) -> pb.PlaceOrderRequest:
    request = pb.PlaceOrderRequest(
        idempotency_key=key or str(uuid.uuid4()),
        customer_id="cust-1",
        lines=[
            order_line_pb2.OrderLine(sku="SKU-MUG", quantity=2),
            order_line_pb2.OrderLine(sku="SKU-PEN", quantity=1),
        ],
        currency_code="USD",
        shipping_address=address_pb2.Address(
            recipient_name="Ada Lovelace",
            line1="1 Main Street",
            city="Springfield",
            postal_code="12345",
            country_code="US",
        ),
        payment_token="tok-ok",
    )
    for name, value in changes.items():
        if name == "lines":
            del request.lines[:]
            request.lines.extend(value)
        elif name == "shipping_address" and value is None:
            request.ClearField("shipping_address")
        elif name == "shipping_address":
            request.shipping_address.CopyFrom(value)
        else:
            setattr(request, name, value)
    return request


async def place(stub: Stub, request: pb.PlaceOrderRequest | None = None) -> pb.Order:
    response = await stub.PlaceOrder(request or place_request(), timeout=10)
    return response.order


async def status_of(stub: Stub, order_id: str) -> pb.Order:
    return (await stub.GetOrder(pb.GetOrderRequest(order_id=order_id), timeout=10)).order


async def wait_status(stub: Stub, order_id: str, status: pb.OrderStatus.ValueType) -> pb.Order:
    async def reached() -> bool:
        return (await status_of(stub, order_id)).status == status

    await wait_for(reached, timeout=15, what=f"order {order_id} in {pb.OrderStatus.Name(status)}")
    return await status_of(stub, order_id)


async def count(js: Any, subject: str | None = None, stream: str = ORDER_STREAM) -> int:
    return await stream_count(js, stream, subject)


async def wait_count(js: Any, subject: str, expected: int, stream: str = ORDER_STREAM) -> None:
    async def reached() -> bool:
        return await count(js, subject, stream) == expected

    await wait_for(reached, timeout=15, what=f"{expected} message(s) on {subject}")


async def table_rows(runtime: ServiceRuntime, table: str) -> int:
    async with runtime.db.transaction() as tx:
        row = await tx.fetchone(f"SELECT COUNT(*) FROM {table}")
    assert row is not None
    return int(row[0])


async def last_event(js: Any, subject: str, cls: type[Message]) -> tuple[Envelope, Any]:
    raw = await js.get_last_msg(ORDER_STREAM, subjects.event_type_filter(subject))
    event = cls()
    event.ParseFromString(raw.data)
    return Envelope.from_headers(raw.headers), event


async def consumer_drained(js: Any, stream: str, event_type: str) -> None:
    durable = subjects.durable_name("order", event_type)

    async def drained() -> bool:
        info = await js.consumer_info(stream, durable)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    await wait_for(drained, timeout=15, what=f"{durable} to handle everything")


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def settle() -> None:
    """Longer than a relay sweep and a fetch: time for a wrongly emitted event to show up."""
    await asyncio.sleep(0.6)


# --- PlaceOrder ---


async def test_a_placed_order_is_pending_and_publishes_one_order_created(
    stub: Stub, js: Any, tmp_path: Path
) -> None:
    order = await place(stub)

    assert order.status == pb.ORDER_STATUS_PENDING
    assert order.correlation_id == order.order_id
    assert [(line.sku, line.quantity, line.unit_price.amount_minor) for line in order.lines] == [
        ("SKU-MUG", 2, 1250),
        ("SKU-PEN", 1, 199),
    ]
    assert (order.total.amount_minor, order.total.currency_code) == (2 * 1250 + 199, "USD")
    await wait_count(js, CREATED, 1)
    envelope, event = await last_event(js, CREATED, order_events.OrderCreated)
    assert envelope.correlation_id == order.order_id
    assert envelope.aggregate_id == order.order_id
    assert envelope.source == "order"
    assert event.order_id == order.order_id
    assert event.customer_id == "cust-1"
    assert [line.unit_price.amount_minor for line in event.lines] == [1250, 199]
    assert event.total == order.total
    assert event.shipping_address.city == "Springfield"
    # Sealed for the payment service: only its private key (here the data folder's) opens it.
    assert "tok-ok" not in event.payment_token
    opening_key = payment_token.opening_key(SagaSettings(data_dir=tmp_path))
    assert payment_token.open_token(opening_key, order.order_id, event.payment_token) == "tok-ok"
    assert event.placed_at == order.created_at
    await settle()
    assert await count(js) == 1


def lines_of(n: int, sku: str = "SKU-MUG", quantity: int = 1) -> list[order_line_pb2.OrderLine]:
    return [order_line_pb2.OrderLine(sku=sku, quantity=quantity) for _ in range(n)]


BAD_REQUESTS: dict[str, tuple[Callable[[], pb.PlaceOrderRequest], set[str]]] = {
    "no lines": (lambda: place_request(lines=[]), {"lines"}),
    "zero quantity": (lambda: place_request(lines=lines_of(1, quantity=0)), {"lines[0].quantity"}),
    "negative quantity": (
        lambda: place_request(lines=[*lines_of(1), *lines_of(1, quantity=-3)]),
        {"lines[1].quantity"},
    ),
    "unknown sku": (lambda: place_request(lines=lines_of(1, sku="SKU-NOPE")), {"lines[0].sku"}),
    "unknown currency": (lambda: place_request(currency_code="XYZ"), {"currency_code"}),
    "not the catalog's currency": (lambda: place_request(currency_code="EUR"), {"currency_code"}),
    "missing idempotency key": (lambda: place_request(idempotency_key=""), {"idempotency_key"}),
    "missing address": (lambda: place_request(shipping_address=None), {"shipping_address"}),
    "missing address fields": (
        lambda: place_request(shipping_address=address_pb2.Address(line1="1 Main Street")),
        {
            "shipping_address.recipient_name",
            "shipping_address.city",
            "shipping_address.postal_code",
            "shipping_address.country_code",
        },
    ),
    "over 100 lines": (lambda: place_request(lines=lines_of(101)), {"lines"}),
    "everything wrong at once": (
        lambda: pb.PlaceOrderRequest(),
        {
            "idempotency_key",
            "customer_id",
            "lines",
            "currency_code",
            "shipping_address",
            "payment_token",
        },
    ),
}


async def test_every_bad_request_is_invalid_argument_naming_its_fields_and_changes_nothing(
    stub: Stub, js: Any, runtime: ServiceRuntime
) -> None:
    for case, (make, fields) in BAD_REQUESTS.items():
        error = await rpc_error(stub.PlaceOrder(make(), timeout=10))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert {field for field, _ in field_violations(error)} == fields, case
    assert await table_rows(runtime, "orders") == 0
    assert await table_rows(runtime, "choreo_outbox") == 0
    await settle()
    assert await count(js) == 0


async def test_a_replayed_request_returns_the_same_order_and_publishes_nothing_more(
    stub: Stub, js: Any, runtime: ServiceRuntime
) -> None:
    request = place_request("key-replay")
    first = await place(stub, request)
    await wait_count(js, CREATED, 1)

    again = await place(stub, request)

    assert again.order_id == first.order_id
    assert again.created_at == first.created_at
    await settle()
    assert await count(js, CREATED) == 1
    assert await table_rows(runtime, "orders") == 1


async def test_a_key_reused_for_a_different_request_is_refused_on_idempotency_key(
    stub: Stub, js: Any, runtime: ServiceRuntime
) -> None:
    first = await place(stub, place_request("key-reused"))

    error = await rpc_error(
        stub.PlaceOrder(place_request("key-reused", customer_id="someone-else"), timeout=10)
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = field_violations(error)
    assert field == "idempotency_key" and first.order_id in description
    assert await table_rows(runtime, "orders") == 1
    await wait_count(js, CREATED, 1)
    await settle()
    assert await count(js, CREATED) == 1


async def test_concurrent_calls_with_one_key_place_one_order(
    stub: Stub, js: Any, runtime: ServiceRuntime
) -> None:
    request = place_request("key-race")

    orders = await asyncio.gather(*(place(stub, request) for _ in range(8)))

    assert len({order.order_id for order in orders}) == 1
    assert await table_rows(runtime, "orders") == 1
    await wait_count(js, CREATED, 1)
    await settle()
    assert await count(js, CREATED) == 1


# --- queries ---


async def test_unknown_and_missing_order_ids(stub: Stub) -> None:
    unknown = pb.GetOrderRequest(order_id="no-such-order")
    assert (await rpc_error(stub.GetOrder(unknown))).code() == grpc.StatusCode.NOT_FOUND
    watch = stub.WatchOrder(pb.WatchOrderRequest(order_id="no-such-order"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in watch:
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    empty = await rpc_error(stub.GetOrder(pb.GetOrderRequest()))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(empty)] == ["order_id"]


async def test_orders_are_listed_newest_first_in_pages_and_by_status(stub: Stub, js: Any) -> None:
    placed = [await place(stub) for _ in range(3)]
    newest_first = [order.order_id for order in reversed(placed)]

    first = await stub.ListOrders(pb.ListOrdersRequest(page_size=2))
    second = await stub.ListOrders(
        pb.ListOrdersRequest(page_size=2, page_token=first.next_page_token)
    )
    everything = await stub.ListOrders(pb.ListOrdersRequest())

    assert [o.order_id for o in first.orders] + [o.order_id for o in second.orders] == newest_first
    assert second.next_page_token == ""
    assert [o.order_id for o in everything.orders] == newest_first

    await publish_event(
        js,
        payment_events.PaymentCompleted(order_id=placed[1].order_id, payment_id="pay-1"),
        aggregate_id=placed[1].order_id,
    )
    await wait_status(stub, placed[1].order_id, pb.ORDER_STATUS_CONFIRMED)
    confirmed = await stub.ListOrders(pb.ListOrdersRequest(status=pb.ORDER_STATUS_CONFIRMED))
    assert [o.order_id for o in confirmed.orders] == [placed[1].order_id]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListOrdersRequest(page_size=501), "page_size"),
        (pb.ListOrdersRequest(page_size=-1), "page_size"),
        (pb.ListOrdersRequest(page_token="not-a-token"), "page_token"),
        (pb.ListOrdersRequest(status=pb.ORDER_STATUS_UNSPECIFIED), "status"),
    ],
)
async def test_a_bad_list_request_names_its_field(
    stub: Stub, request_: pb.ListOrdersRequest, field: str
) -> None:
    error = await rpc_error(stub.ListOrders(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [name for name, _ in field_violations(error)] == [field]


# --- the saga, as the flow table says ---


async def test_payment_shipment_and_notification_ship_the_order_and_watch_follows_it(
    stub: Stub, js: Any
) -> None:
    order = await place(stub)
    order_id = order.order_id
    updates: list[pb.Order] = []

    async def watch() -> None:
        async for update in stub.WatchOrder(pb.WatchOrderRequest(order_id=order_id)):
            updates.append(update.order)

    watcher = asyncio.create_task(watch())
    await wait_for(lambda: _true(bool(updates)), what="the watch's first message")

    payment = await publish_event(
        js,
        payment_events.PaymentCompleted(order_id=order_id, payment_id="pay-1", customer_id="c"),
        aggregate_id=order_id,
        correlation_id=order_id,
    )
    await wait_status(stub, order_id, pb.ORDER_STATUS_CONFIRMED)
    await publish_event(
        js,
        shipping_events.ShipmentCreated(
            order_id=order_id, shipment_id="shp-1", tracking_id="T1", carrier="DHL"
        ),
        aggregate_id=order_id,
        correlation_id=order_id,
    )
    await wait_status(stub, order_id, pb.ORDER_STATUS_SHIPPED)
    await publish_event(
        js,
        notification_events.NotificationSent(
            notification_id="n-1",
            order_id=order_id,
            kind=notification_events.NOTIFICATION_KIND_ORDER_SHIPPED,
        ),
        aggregate_id=order_id,
        correlation_id=order_id,
    )
    await asyncio.wait_for(watcher, timeout=15)  # the stream ends by itself

    statuses = [u.status for u in updates]
    assert list(dict.fromkeys(statuses)) == [
        pb.ORDER_STATUS_PENDING,
        pb.ORDER_STATUS_CONFIRMED,
        pb.ORDER_STATUS_SHIPPED,
    ]
    final = updates[-1]
    assert final.status == pb.ORDER_STATUS_SHIPPED and final.customer_notified
    assert (final.payment_id, final.shipment_id, final.tracking_id) == ("pay-1", "shp-1", "T1")
    await wait_count(js, CONFIRMED, 1)
    await wait_count(js, SHIPPED, 1)
    envelope, confirmed = await last_event(js, CONFIRMED, order_events.OrderConfirmed)
    assert confirmed.payment_id == "pay-1"
    assert envelope.correlation_id == order_id and envelope.causation_id == payment.event_id
    _, shipped = await last_event(js, SHIPPED, order_events.OrderShipped)
    assert (shipped.shipment_id, shipped.tracking_id) == ("shp-1", "T1")
    # What the notification service tells the customer from: the order's, not shipping's.
    assert (shipped.customer_id, shipped.carrier) == ("cust-1", "DHL")
    await settle()
    assert await count(js) == 3  # created, confirmed, shipped: the notification emits nothing


async def _true(value: bool) -> bool:
    return value


async def order_history(js: Any, order_id: str) -> list[tuple[int, str]]:
    """(aggregate version, event name) of the order's events, in stream order."""
    envelopes = [Envelope.from_headers(m.headers) for m in await read_stream(js, ORDER_STREAM)]
    return [
        (e.aggregate_version, e.event_type.rsplit(".", 1)[-1])
        for e in envelopes
        if e.aggregate_id == order_id
    ]


async def test_a_shipment_seen_before_the_payment_confirms_then_ships_the_order(
    stub: Stub, js: Any
) -> None:
    order_id = (await place(stub)).order_id
    await publish_event(
        js,
        shipping_events.ShipmentCreated(
            order_id=order_id, shipment_id="shp-1", tracking_id="T1", payment_id="pay-1"
        ),
        aggregate_id=order_id,
    )
    await wait_status(stub, order_id, pb.ORDER_STATUS_SHIPPED)
    assert (await status_of(stub, order_id)).payment_id == "pay-1"
    await publish_event(
        js,
        payment_events.PaymentCompleted(order_id=order_id, payment_id="pay-1"),
        aggregate_id=order_id,
    )
    await wait_count(js, SHIPPED, 1)
    await settle()
    assert await order_history(js, order_id) == [
        (1, "OrderCreated"), (2, "OrderConfirmed"), (3, "OrderShipped"),
    ]  # fmt: skip
    (confirmed,) = [
        order_events.OrderConfirmed.FromString(m.data) for m in await _stream(js, CONFIRMED)
    ]
    assert confirmed.payment_id == "pay-1"


async def test_a_shipping_failure_seen_before_the_payment_confirms_then_cancels_the_order(
    stub: Stub, js: Any
) -> None:
    order_id = (await place(stub)).order_id
    await publish_event(
        js,
        shipping_events.ShippingFailed(
            order_id=order_id,
            payment_id="pay-1",
            reason=shipping_events.SHIPPING_FAILURE_REASON_UNSERVICEABLE_DESTINATION,
            detail="no carrier delivers to AQ",
        ),
        aggregate_id=order_id,
    )
    await wait_status(stub, order_id, pb.ORDER_STATUS_CANCELLED)
    await publish_event(
        js,
        payment_events.PaymentCompleted(order_id=order_id, payment_id="pay-1"),
        aggregate_id=order_id,
    )
    await wait_count(js, CANCELLED, 1)
    await settle()
    assert await order_history(js, order_id) == [
        (1, "OrderCreated"), (2, "OrderConfirmed"), (3, "OrderCancelled"),
    ]  # fmt: skip
    (cancelled,) = [
        order_events.OrderCancelled.FromString(m.data) for m in await _stream(js, CANCELLED)
    ]
    assert cancelled.charged  # the customer is told the charge is refunded


async def _stream(js: Any, event_type: str) -> list[Any]:
    return await read_stream(js, ORDER_STREAM, subjects.event_type_filter(event_type))


async def test_a_shipping_failure_after_confirmation_cancels_once_even_when_delivered_twice(
    stub: Stub, js: Any
) -> None:
    order_id = (await place(stub)).order_id
    await publish_event(
        js,
        payment_events.PaymentCompleted(order_id=order_id, payment_id="p"),
        aggregate_id=order_id,
    )
    await wait_status(stub, order_id, pb.ORDER_STATUS_CONFIRMED)
    failed = shipping_events.ShippingFailed(
        order_id=order_id,
        payment_id="p",
        reason=shipping_events.SHIPPING_FAILURE_REASON_UNSERVICEABLE_DESTINATION,
        detail="no carrier delivers to AQ",
    )

    first = await publish_event(js, failed, aggregate_id=order_id)
    # The same event again past the broker's dedup (a new Nats-Msg-Id): the inbox stops it.
    await publish_event(js, failed, aggregate_id=order_id, event_id=first.event_id, msg_id="again")
    # A second, distinct failure event: the order is already final, so nothing more happens.
    await publish_event(js, failed, aggregate_id=order_id)

    cancelled = await wait_status(stub, order_id, pb.ORDER_STATUS_CANCELLED)
    assert cancelled.cancellation_reason == order_events.CANCELLATION_REASON_SHIPPING_FAILED
    assert "no carrier delivers to AQ" in cancelled.cancellation_detail
    await consumer_drained(js, "SHOP_SHIPPING", "shop.shipping.v1.ShippingFailed")
    await wait_count(js, CANCELLED, 1)
    await settle()
    assert await count(js, CANCELLED) == 1
    _, event = await last_event(js, CANCELLED, order_events.OrderCancelled)
    assert event.customer_id == "cust-1"
    assert event.reason == order_events.CANCELLATION_REASON_SHIPPING_FAILED
    assert event.detail == cancelled.cancellation_detail
    assert event.charged  # confirmed = paid: the customer is told about the refund


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (
            inventory_events.InventoryReservationFailed(
                reason=inventory_events.RESERVATION_FAILURE_REASON_INSUFFICIENT_STOCK
            ),
            order_events.CANCELLATION_REASON_INVENTORY_UNAVAILABLE,
        ),
        (
            payment_events.PaymentFailed(
                reason=payment_events.PAYMENT_FAILURE_REASON_CREDIT_LIMIT_EXCEEDED
            ),
            order_events.CANCELLATION_REASON_PAYMENT_FAILED,
        ),
    ],
)
async def test_a_failed_step_cancels_a_pending_order_with_its_reason(
    stub: Stub, js: Any, failure: Any, reason: int
) -> None:
    order_id = (await place(stub)).order_id
    event = type(failure)()
    event.CopyFrom(failure)
    event.order_id = order_id

    await publish_event(js, event, aggregate_id=order_id)

    cancelled = await wait_status(stub, order_id, pb.ORDER_STATUS_CANCELLED)
    assert cancelled.cancellation_reason == reason
    assert cancelled.cancellation_detail  # readable even when the failing service sent none
    await wait_count(js, CANCELLED, 1)
    _, published = await last_event(js, CANCELLED, order_events.OrderCancelled)
    assert (published.reason, published.customer_id) == (reason, "cust-1")
    assert not published.charged  # nothing was taken: no refund to mention


async def test_an_event_for_an_order_never_placed_here_is_dead_lettered(
    runtime: ServiceRuntime, js: Any
) -> None:
    published = await publish_event(
        js, payment_events.PaymentCompleted(order_id="ghost", payment_id="p"), aggregate_id="ghost"
    )

    dead = subjects.dlq_subject("order", published.subject)
    await wait_count(js, dead, 1, stream="CHOREO_DLQ")
    raw = await js.get_last_msg("CHOREO_DLQ", dead)
    assert raw.headers[dlq.H_REASON] == dlq.REJECTED
    assert "ghost" in raw.headers[dlq.H_DETAIL]


def test_a_catalog_that_cannot_be_read_stops_the_service_with_the_setting_to_fix(
    tmp_path: Path,
) -> None:
    saga = SagaSettings(catalog_path=tmp_path / "missing.json")
    with pytest.raises(ConfigurationError, match="CHOREO_CATALOG"):
        build(RuntimeSettings(service="order"), saga)


# --- The final state the customer is told (invariant 4) ---


@pytest.fixture
async def notification(broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[ServiceRuntime]:
    settings = runtime_settings("notification", broker, tmp_path)
    service = ServiceRuntime(
        build_notification(settings, SagaSettings(data_dir=tmp_path)), settings
    )
    await service.start()
    yield service
    await service.stop(grace_s=1.0)


async def wait_notified(stub: Stub, order_id: str) -> pb.Order:
    async def told() -> bool:
        return (await status_of(stub, order_id)).customer_notified

    await wait_for(told, timeout=15, what=f"order {order_id} to record its notification")
    return await status_of(stub, order_id)


def booked(order_id: str) -> shipping_events.ShipmentCreated:
    return shipping_events.ShipmentCreated(
        order_id=order_id,
        shipment_id="shp-1",
        tracking_id="T1",
        carrier="DHL",
        customer_id="cust-1",
        payment_id="pay-1",
    )


async def test_an_order_cancelled_at_its_deadline_is_told_cancelled_only_though_it_was_booked(
    runtime: ServiceRuntime, stub: Stub, notification: ServiceRuntime, js: Any
) -> None:
    """The network-chaos defect: the order service cancels at the saga deadline (partitioned,
    so its OrderCancelled leaves late) while shipping books the shipment. The order service,
    the single writer of the order's state, keeps it cancelled and never publishes
    OrderShipped; notification tells of that final state only, once."""
    order_id = (await place(stub)).order_id
    await publish_event(
        js,
        payment_events.PaymentCompleted(order_id=order_id, payment_id="pay-1"),
        aggregate_id=order_id,
    )
    await wait_status(stub, order_id, pb.ORDER_STATUS_CONFIRMED)
    assert await cancel_overdue(runtime, 0.0, datetime.now(UTC) + timedelta(seconds=1)) == 1
    await publish_event(js, booked(order_id), aggregate_id=order_id)
    await consumer_drained(js, "SHOP_SHIPPING", "shop.shipping.v1.ShipmentCreated")
    await wait_for_count(js, notification_events.NotificationSent, 1)
    final = await wait_notified(stub, order_id)
    await settle()

    assert final.status == pb.ORDER_STATUS_CANCELLED
    assert final.cancellation_reason == order_events.CANCELLATION_REASON_DEADLINE_EXCEEDED
    assert await count(js, SHIPPED) == 0
    (sent,) = await emitted(js, notification_events.NotificationSent)
    assert (sent.order_id, sent.kind) == (
        order_id,
        notification_events.NOTIFICATION_KIND_ORDER_CANCELLED,
    )
    assert "refunded" in sent.message  # it was paid for


async def test_a_shipped_order_is_told_shipped_once_from_order_shipped(
    stub: Stub, notification: ServiceRuntime, js: Any
) -> None:
    order_id = (await place(stub)).order_id
    await publish_event(
        js,
        payment_events.PaymentCompleted(order_id=order_id, payment_id="pay-1"),
        aggregate_id=order_id,
    )
    await wait_status(stub, order_id, pb.ORDER_STATUS_CONFIRMED)
    await publish_event(js, booked(order_id), aggregate_id=order_id)
    await wait_count(js, SHIPPED, 1)
    await wait_for_count(js, notification_events.NotificationSent, 1)
    final = await wait_notified(stub, order_id)
    await settle()

    assert final.status == pb.ORDER_STATUS_SHIPPED
    (sent,) = await emitted(js, notification_events.NotificationSent)
    assert (sent.order_id, sent.customer_id, sent.kind) == (
        order_id,
        "cust-1",
        notification_events.NOTIFICATION_KIND_ORDER_SHIPPED,
    )
    assert "with DHL" in sent.message and "T1" in sent.message
