"""Running a v2 of an event beside v1: a consumer that reads v2 upcasts v1 bodies it still
receives, and refuses versions it knows nothing about (pure, no I/O).

``testkit.desk.v2.TicketOpened`` does not exist in the test contracts (tests/testkit), so the
test builds it the way ``buf generate`` would describe it: v1's fields plus a new one.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from choreo.envelope import EventRegistry
from choreo.errors import PoisonMessage
from tests.testkit import desk_events as desk_v1

V1 = "testkit.desk.v1.TicketOpened"
V2 = "testkit.desk.v2.TicketOpened"


def ticket_opened_v2() -> type[Message]:
    file = descriptor_pb2.FileDescriptorProto(
        name="testkit/desk/v2/events_test.proto", package="testkit.desk.v2", syntax="proto3"
    )
    message = file.message_type.add(name="TicketOpened")
    string = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    for number, name in enumerate(["ticket_id", "customer_id", "channel"], start=1):
        message.field.add(name=name, number=number, type=string, label=optional)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(V2))


def upcast(old: Message) -> Message:
    assert isinstance(old, desk_v1.TicketOpened)
    return TICKET_OPENED_V2(ticket_id=old.ticket_id, customer_id=old.customer_id, channel="web")


# A class built at run time: its fields are unknown to the stubs, so it is called as Any.
TICKET_OPENED_V2: Any = ticket_opened_v2()


@pytest.fixture
def registry() -> EventRegistry:
    registry = EventRegistry()
    registry.register(TICKET_OPENED_V2)
    registry.register_upcaster(desk_v1.TicketOpened, upcast)
    return registry


def test_a_v2_body_decodes_as_v2(registry: EventRegistry) -> None:
    body = TICKET_OPENED_V2(ticket_id="o-1", customer_id="c-1", channel="app").SerializeToString()
    event: Any = registry.decode(V2, body)
    assert (event.ticket_id, event.channel) == ("o-1", "app")


def test_a_v1_body_is_upcast_to_v2(registry: EventRegistry) -> None:
    body = desk_v1.TicketOpened(ticket_id="o-1", customer_id="c-1").SerializeToString()
    expected = TICKET_OPENED_V2(ticket_id="o-1", customer_id="c-1", channel="web")
    event = registry.decode(V1, body)
    assert type(event) is TICKET_OPENED_V2
    assert event == expected
    assert registry.knows(V1) and registry.knows(V2)


def test_a_version_with_neither_class_nor_upcaster_is_poison_naming_what_is_read(
    registry: EventRegistry,
) -> None:
    with pytest.raises(PoisonMessage) as caught:
        registry.decode("testkit.desk.v3.TicketOpened", b"")
    assert caught.value.reason == "unsupported_schema_version"
    assert V2 in caught.value.detail


def test_without_an_upcaster_v1_is_refused_once_v2_is_what_is_read() -> None:
    registry = EventRegistry()
    registry.register(TICKET_OPENED_V2)
    with pytest.raises(PoisonMessage) as caught:
        registry.decode(V1, b"")
    assert caught.value.reason == "unsupported_schema_version"
