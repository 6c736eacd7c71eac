"""Running a v2 of an event beside v1: a consumer that reads v2 upcasts v1 bodies it still
receives, and refuses versions it knows nothing about (pure, no I/O).

``shop.order.v2.OrderCreated`` does not exist in proto/ yet, so the test builds it the way
``buf generate`` would describe it: v1's fields plus a new one.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from choreo.envelope import EventRegistry
from choreo.errors import PoisonMessage
from shop.order.v1 import events_pb2 as order_v1

V2 = "shop.order.v2.OrderCreated"


def order_created_v2() -> type[Message]:
    file = descriptor_pb2.FileDescriptorProto(
        name="shop/order/v2/events_test.proto", package="shop.order.v2", syntax="proto3"
    )
    message = file.message_type.add(name="OrderCreated")
    string = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    for number, name in enumerate(["order_id", "customer_id", "channel"], start=1):
        message.field.add(name=name, number=number, type=string, label=optional)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(V2))


def upcast(old: Message) -> Message:
    assert isinstance(old, order_v1.OrderCreated)
    return ORDER_CREATED_V2(order_id=old.order_id, customer_id=old.customer_id, channel="web")


# A class built at run time: its fields are unknown to the stubs, so it is called as Any.
ORDER_CREATED_V2: Any = order_created_v2()


@pytest.fixture
def registry() -> EventRegistry:
    registry = EventRegistry()
    registry.register(ORDER_CREATED_V2)
    registry.register_upcaster(order_v1.OrderCreated, upcast)
    return registry


def test_a_v2_body_decodes_as_v2(registry: EventRegistry) -> None:
    body = ORDER_CREATED_V2(order_id="o-1", customer_id="c-1", channel="app").SerializeToString()
    event: Any = registry.decode(V2, body)
    assert (event.order_id, event.channel) == ("o-1", "app")


def test_a_v1_body_is_upcast_to_v2(registry: EventRegistry) -> None:
    body = order_v1.OrderCreated(order_id="o-1", customer_id="c-1").SerializeToString()
    expected = ORDER_CREATED_V2(order_id="o-1", customer_id="c-1", channel="web")
    event = registry.decode("shop.order.v1.OrderCreated", body)
    assert type(event) is ORDER_CREATED_V2
    assert event == expected
    assert registry.knows("shop.order.v1.OrderCreated") and registry.knows(V2)


def test_a_version_with_neither_class_nor_upcaster_is_poison_naming_what_is_read(
    registry: EventRegistry,
) -> None:
    with pytest.raises(PoisonMessage) as caught:
        registry.decode("shop.order.v3.OrderCreated", b"")
    assert caught.value.reason == "unsupported_schema_version"
    assert V2 in caught.value.detail


def test_without_an_upcaster_v1_is_refused_once_v2_is_what_is_read() -> None:
    registry = EventRegistry()
    registry.register(ORDER_CREATED_V2)
    with pytest.raises(PoisonMessage) as caught:
        registry.decode("shop.order.v1.OrderCreated", b"")
    assert caught.value.reason == "unsupported_schema_version"
