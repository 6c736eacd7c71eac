"""The saga's shape is read from the ``(choreo.choreography.v1.saga)`` option of its start event:
the shop's exactly as proto/shop/order/v1/events.proto writes it, and an option that names an
event the contracts lack, or a key that is not a string field, is refused by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor

from choreo import contracts
from choreo.choreography.v1 import choreography_pb2
from shop.order.v1 import events_pb2 as order_events


def test_the_shop_saga_is_read_back_exactly() -> None:
    (shape,) = contracts.sagas()
    assert shape == contracts.SagaShape(
        name="order",
        start_event="shop.order.v1.OrderCreated",
        key_field="order_id",
        final_events=("shop.order.v1.OrderShipped", "shop.order.v1.OrderCancelled"),
        success_events=("shop.order.v1.OrderShipped",),
        compensations={
            "shop.inventory.v1.InventoryReservationFailed": ("shop.order.v1.OrderCancelled",),
            "shop.payment.v1.PaymentFailed": (
                "shop.inventory.v1.InventoryReleased",
                "shop.order.v1.OrderCancelled",
            ),
            "shop.shipping.v1.ShippingFailed": (
                "shop.payment.v1.PaymentRefunded",
                "shop.inventory.v1.InventoryReleased",
                "shop.order.v1.OrderCancelled",
            ),
        },
        closing_event="shop.notification.v1.NotificationSent",
        # v2 of OrderCreated, beside v1 during its migration window, starts the saga too.
        start_events=("shop.order.v1.OrderCreated", "shop.order.v2.OrderCreated"),
    )
    assert shape.failed_events == ("shop.order.v1.OrderCancelled",)
    assert shape.compensation_events == {
        "shop.order.v1.OrderCancelled",
        "shop.inventory.v1.InventoryReleased",
        "shop.payment.v1.PaymentRefunded",
    }
    assert shape.starts_with("shop.order.v2.OrderCreated")
    assert not shape.starts_with("shop.order.v1.OrderConfirmed")
    assert contracts.saga_of("shop.order.v2.OrderCreated") == shape
    assert contracts.saga_of("shop.order.v1.OrderShipped") is None
    assert shape.key_of(order_events.OrderCreated(order_id="o-7")) == "o-7"
    assert shape.events() <= set(contracts.event_classes())


def _events(saga: dict[str, Any], *, key_type: int = 9) -> Mapping[str, Descriptor]:
    """The events of a tiny contract, acme.booking.v1, in a pool of its own: BookingRequested
    (declaring ``saga``), BookingConfirmed, BookingRejected, SeatReleased."""
    pool = descriptor_pool.DescriptorPool()
    for module in (descriptor_pb2, choreography_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    file = descriptor_pb2.FileDescriptorProto(
        name="acme/booking/v1/events.proto",
        package="acme.booking.v1",
        syntax="proto3",
        dependency=["choreo/choreography/v1/choreography.proto"],
    )
    for name in ("BookingRequested", "BookingConfirmed", "BookingRejected", "SeatReleased"):
        message = file.message_type.add(name=name)
        message.field.add(name="booking_id", number=1, type=key_type, label=1)
        options = message.options
        options.Extensions[choreography_pb2.event].aggregate_type = "booking"
        if name == "BookingRequested":
            options.Extensions[choreography_pb2.saga].CopyFrom(choreography_pb2.SagaOptions(**saga))
    pool.Add(file)
    found = pool.FindFileByName(file.name)
    return {m.full_name: m for m in found.message_types_by_name.values()}


BOOKING: dict[str, Any] = {
    "name": "booking",
    "key_field": "booking_id",
    "final_events": ["acme.booking.v1.BookingConfirmed", "acme.booking.v1.BookingRejected"],
    "success_events": ["acme.booking.v1.BookingConfirmed"],
    "compensations": [
        {"failure": "acme.booking.v1.BookingRejected", "required": ["acme.booking.v1.SeatReleased"]}
    ],
}


def test_another_choreography_declares_its_own_saga() -> None:
    (shape,) = contracts.read_saga_shapes(_events(BOOKING))
    assert shape.name == "booking" and shape.start_event == "acme.booking.v1.BookingRequested"
    assert shape.compensations == {
        "acme.booking.v1.BookingRejected": ("acme.booking.v1.SeatReleased",)
    }
    assert shape.closing_event == ""


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            {"final_events": ["acme.booking.v1.BookingConfirmed", "acme.booking.v1.Lost"]},
            "final event 'acme.booking.v1.Lost' is not an event of the contracts",
        ),
        ({"closing_event": "acme.booking.v1.Nope"}, "closing event 'acme.booking.v1.Nope'"),
        (
            {
                "compensations": [
                    {"failure": "acme.booking.v1.BookingRejected", "required": ["x.y.v1.Z"]}
                ]
            },
            "compensation of acme.booking.v1.BookingRejected 'x.y.v1.Z' is not an event",
        ),
        ({"key_field": "order_id"}, "key_field 'order_id' is not a string field"),
        ({"final_events": []}, "names no final_events"),
        (
            {"success_events": ["acme.booking.v1.SeatReleased"]},
            "success event 'acme.booking.v1.SeatReleased' is not a final event",
        ),
    ],
)
def test_a_bad_option_is_refused_naming_the_start_event(change: dict[str, Any], words: str) -> None:
    with pytest.raises(contracts.ContractsError) as refused:
        contracts.read_saga_shapes(_events({**BOOKING, **change}))
    assert str(refused.value).startswith("acme.booking.v1.BookingRequested")
    assert words in str(refused.value)


def test_a_key_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(contracts.ContractsError, match="key_field 'booking_id' is not a string"):
        contracts.read_saga_shapes(_events(BOOKING, key_type=3))  # int64
