"""The largest event a valid request can lead to stays far below the broker's message limit.

A request field that the saga copies into its events (customer id, address, lines, payment
token) is copied into *every* hop: OrderCreated -> InventoryReserved -> PaymentCompleted ->
ShipmentCreated -> NotificationSent, plus the failure and compensation branches. A request the
door admits must never produce an event that the broker refuses (``max_payload``, 1 MiB by
default), or the outbox relay could never publish it. This test builds the largest request the
declared rules admit (read from the descriptors), walks it through each service's own mapping
and domain code the way its handlers do, and measures each event's body plus its NATS headers
as the project's envelope writes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import protovalidate
from google.protobuf.message import Message

from choreo import contracts, sealing
from choreo.envelope import Envelope
from services import payment_token
from services.catalog import Catalog, Customer, Product
from services.inventory import domain as inventory_domain
from services.inventory import mapping as inventory_mapping
from services.notification import domain as notification_domain
from services.notification import mapping as notification_mapping
from services.order import domain as order_domain
from services.order import mapping as order_mapping
from services.order.handlers import _explained
from services.payment import domain as payment_domain
from services.payment import mapping as payment_mapping
from services.values import Money
from shop.inventory.v1 import events_pb2 as inventory_events
from shop.order.v1 import events_pb2 as order_events
from shop.order.v1 import order_service_pb2
from shop.payment.v1 import events_pb2 as payment_events
from shop.shipping.v1 import events_pb2 as shipping_events

from .limits import fill_maximal

NATS_MAX_PAYLOAD = 1024 * 1024  # nats-server's default, and what choreo.broker configures
BUDGET = 64 * 1024  # "far below": 1/16 of the limit
# Values the services make themselves (ids, carrier names, tracking numbers, provider texts)
# are uuids or short words; 128 characters is a generous bound for any of them.
SERVER_TEXT = "S" * 128
# The largest trace state OpenTelemetry keeps (32 members, 256-character keys and values); it
# may come from a client's gRPC metadata and is copied into every event's headers.
TRACESTATE = ",".join(f"{'k' * 255}{i:01x}={'v' * 256}" for i in range(32))
TRACEPARENT = f"00-{'a' * 32}-{'b' * 16}-01"
PRICE_MINOR = 90_000_000_000_000  # 100 lines x 1000 units of it still fit in an int64


def maximal_request() -> order_service_pb2.PlaceOrderRequest:
    request = fill_maximal(order_service_pb2.PlaceOrderRequest())
    assert isinstance(request, order_service_pb2.PlaceOrderRequest)
    for i, line in enumerate(request.lines):
        # Distinct SKUs of the longest length: one reservation line and one shortage each.
        line.sku = f"{line.sku[:-3]}{i:03d}"
        # The per-line cap is a CEL rule on PlaceOrderRequest.lines ("order_line.quantity_per_
        # line"), stricter than OrderLine.quantity's own range; a valid request keeps it.
        line.quantity = 1000
    request.currency_code = "USD"
    return request


def wire_headers_size(headers: dict[str, str]) -> int:
    """Bytes of NATS headers on the wire: a ``NATS/1.0`` line, one ``Name: value`` line each,
    an empty line (CRLF endings); the broker counts them in ``max_payload`` with the body."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return len(f"NATS/1.0\r\n{lines}\r\n".encode())


# The latest time a protobuf Timestamp holds: its seconds and nanos take the most bytes, so the
# measure is the largest and the same on every run (a clock reading's nanos vary in size).
LATEST_TIME = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def envelope_for(event: Message, order_id: str) -> Envelope:
    return Envelope(
        event_id=str(uuid.uuid4()),
        event_type=event.DESCRIPTOR.full_name,
        source="notification",  # the longest service name
        time=LATEST_TIME,
        correlation_id=order_id,
        causation_id=str(uuid.uuid4()),
        chain_depth=2**31 - 1,
        aggregate_type=contracts.aggregate_type(type(event)),
        aggregate_id=order_id,
        aggregate_version=2**63 - 1,
        traceparent=TRACEPARENT,
        tracestate=TRACESTATE,
    )


def saga_events(request: order_service_pb2.PlaceOrderRequest) -> Iterator[Message]:
    """Every event of the saga for ``request``, each field filled as the handlers fill it."""
    catalog = Catalog(
        currency=request.currency_code,
        products={
            line.sku: Product(line.sku, "product", Money(PRICE_MINOR, request.currency_code), 0)
            for line in request.lines
        },
        customers={
            request.customer_id: Customer(request.customer_id, Money(0, request.currency_code))
        },
    )
    command = order_mapping.place_order_from_proto(request)
    assert order_domain.validate_place_order(command, catalog) == []
    order_id = str(uuid.uuid4())
    order = order_domain.new_order(order_id, command, catalog, LATEST_TIME, order_id)
    # The order service seals the token (longer than the plaintext): the event carries that.
    sealed = payment_token.seal(sealing.generate().sealing_key, order_id, command.payment_token)
    created = order_mapping.order_created(order, sealed)
    yield created
    yield order_mapping.order_created_v2(created)  # beside v1 during a migration window

    # inventory (services/inventory/handlers.py)
    reservation_id = inventory_domain.reservation_id_for(order_id)
    yield inventory_events.InventoryReserved(
        order_id=order_id,
        reservation_id=reservation_id,
        lines=created.lines,
        customer_id=created.customer_id,
        total=created.total,
        payment_token=created.payment_token,
        shipping_address=created.shipping_address,
    )
    unknown = inventory_domain.reserve({}, created.lines)
    short = inventory_domain.reserve(
        {
            line.sku: inventory_domain.StockLevel(line.sku, 0, line.quantity - 1, 0, 0)
            for line in created.lines
        },
        created.lines,
    )
    rejected_type = inventory_domain.ReservationRejected
    rejections = [r for r in (unknown, short) if isinstance(r, rejected_type)]
    assert len(rejections) == 2
    failures = [
        inventory_events.InventoryReservationFailed(
            order_id=order_id,
            customer_id=created.customer_id,
            reason=inventory_mapping.REJECTION_REASONS[rejected.reason],
            detail=inventory_mapping.rejection_detail(rejected),
            shortages=[inventory_mapping.shortage(s) for s in rejected.shortages],
        )
        for rejected in rejections
    ]
    yield from failures
    reserved_lines = inventory_mapping.quantity_lines(inventory_domain.summed(created.lines))
    yield inventory_events.InventoryReleased(
        order_id=order_id,
        reservation_id=reservation_id,
        lines=reserved_lines,
        reason=max(inventory_events.ReleaseReason.values()),
    )
    yield inventory_events.InventoryShipped(
        order_id=order_id,
        reservation_id=reservation_id,
        shipment_id=SERVER_TEXT,
        lines=reserved_lines,
    )

    # payment (services/payment/handlers.py)
    payment_id = payment_domain.payment_id_for(order_id)
    yield payment_events.PaymentCompleted(
        order_id=order_id,
        payment_id=payment_id,
        customer_id=created.customer_id,
        amount=created.total,
        gateway_reference=SERVER_TEXT,
        shipping_address=created.shipping_address,
        lines=created.lines,
    )
    declined = payment_domain.Payment(
        order_id,
        payment_id,
        created.customer_id,
        order.total,
        payment_domain.PaymentStatus.FAILED,
        failure_reason=SERVER_TEXT,
    )
    yield payment_events.PaymentFailed(
        order_id=order_id,
        customer_id=created.customer_id,
        amount=created.total,
        reason=max(payment_events.PaymentFailureReason.values()),
        detail=payment_mapping.failure_detail(declined),
    )
    yield payment_events.PaymentRefunded(
        order_id=order_id,
        payment_id=payment_id,
        refund_id=SERVER_TEXT,
        amount=created.total,
        reason=f"shipping failed: {SERVER_TEXT}",
    )

    # shipping (services/shipping/handlers.py)
    yield shipping_events.ShipmentCreated(
        order_id=order_id,
        shipment_id=SERVER_TEXT,
        tracking_id=SERVER_TEXT,
        carrier=SERVER_TEXT,
        customer_id=created.customer_id,
        destination=created.shipping_address,
    )
    yield shipping_events.ShippingFailed(
        order_id=order_id,
        customer_id=created.customer_id,
        payment_id=payment_id,
        reason=max(shipping_events.ShippingFailureReason.values()),
        detail=SERVER_TEXT,
    )

    # order (services/order/handlers.py): the cancellation carries the longest failure detail.
    yield order_events.OrderConfirmed(order_id=order_id, payment_id=payment_id)
    yield order_events.OrderShipped(
        order_id=order_id,
        shipment_id=SERVER_TEXT,
        tracking_id=SERVER_TEXT,
        customer_id=created.customer_id,
        carrier=SERVER_TEXT,
    )
    longest_failure = max(failures, key=lambda f: len(f.detail))
    yield order_events.OrderCancelled(
        order_id=order_id,
        customer_id=created.customer_id,
        reason=max(order_events.CancellationReason.values()),
        detail=_explained("the stock could not be reserved", longest_failure.detail, "X" * 64),
    )

    # notification (services/notification/handlers.py)
    channel = notification_domain.Channel.EMAIL
    shipped = notification_domain.order_shipped(
        order_id, created.customer_id, SERVER_TEXT, SERVER_TEXT, channel
    )
    cancelled = notification_domain.order_cancelled(
        order_id, created.customer_id, "SHIPPING_FAILED", channel, charged=True
    )
    for notification in (shipped, cancelled):
        yield notification_mapping.notification_sent(notification)


def measure(request: order_service_pb2.PlaceOrderRequest) -> dict[str, int]:
    """Event type -> the largest size on the wire (body + headers) it reaches in the saga."""
    sizes: dict[str, int] = {}
    for event in saga_events(request):
        order_id = getattr(event, "order_id", "")
        headers = envelope_for(event, order_id).to_headers()
        size = len(event.SerializeToString()) + wire_headers_size(headers)
        name = event.DESCRIPTOR.full_name
        sizes[name] = max(size, sizes.get(name, 0))
    return sizes


def test_the_maximal_request_is_valid_and_really_is_large() -> None:
    request = maximal_request()

    assert protovalidate.Validator().collect_violations(request) == []
    assert len(request.lines) == 100
    # Each address line is 200 four-byte characters: the rules count characters, not bytes.
    assert len(request.shipping_address.line1.encode()) == 800


def test_every_event_of_the_largest_valid_saga_stays_far_below_max_payload(
    record_property: Any,
) -> None:
    sizes = measure(maximal_request())

    assert set(sizes) == set(contracts.event_classes()), "an event type is not measured"
    largest_type, largest = max(sizes.items(), key=lambda item: item[1])
    record_property("largest_event", f"{largest_type}: {largest} bytes")
    print(f"largest event: {largest_type}, {largest} bytes (body + NATS headers)")
    assert largest < BUDGET, sizes
    assert largest < NATS_MAX_PAYLOAD // 16


def test_the_measure_sees_what_a_request_copies_into_the_events() -> None:
    # Guards the test itself: a longer customer id must make every event that carries it grow,
    # so the measure really follows the fields through the hops.
    small = maximal_request()
    small.customer_id = "c"
    big, little = measure(maximal_request()), measure(small)

    for name in (
        "shop.order.v1.OrderCreated",
        "shop.inventory.v1.InventoryReserved",
        "shop.payment.v1.PaymentCompleted",
        "shop.shipping.v1.ShipmentCreated",
        "shop.notification.v1.NotificationSent",
        "shop.order.v1.OrderCancelled",
    ):
        assert big[name] - little[name] >= 63, name
