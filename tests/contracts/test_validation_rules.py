"""The request rules in proto/ are complete, and they are the schema protovalidate enforces.

Every string field a client sends (every ``*Request`` of every service, nested messages
included) has a declared length limit and refuses NUL, and every repeated field has an item
limit, so no request field is unbounded. The vendored ``buf/validate/validate.proto`` is the
schema the installed ``protovalidate`` package compiled in, so the options written in proto/
mean what the enforcer reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import cast

import pytest
from buf.validate import validate_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from protovalidate._gen.buf.validate import validate_pb

from shop.inventory.v1 import inventory_service_pb2
from shop.notification.v1 import notification_service_pb2
from shop.order.v1 import order_service_pb2
from shop.payment.v1 import payment_service_pb2
from shop.shipping.v1 import shipping_service_pb2

from .limits import longest_string, rules

SERVICE_FILES = (
    order_service_pb2,
    inventory_service_pb2,
    payment_service_pb2,
    shipping_service_pb2,
    notification_service_pb2,
)


def request_types() -> list[Descriptor]:
    found = []
    for module in SERVICE_FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            found += [method.input_type for method in service.methods]
    return found


def request_fields(descriptor: Descriptor, seen: frozenset[str] = frozenset()) -> Iterator[str]:
    """Full names of every field reachable from a request, nested messages included."""
    fields = cast("list[FieldDescriptor]", list(descriptor.fields))
    for field in fields:
        yield field.full_name
        nested = field.message_type
        if nested is not None and nested.full_name not in seen:
            yield from request_fields(nested, seen | {nested.full_name})


def field_by_name(full_name: str) -> FieldDescriptor:
    message_name, _, field_name = full_name.rpartition(".")
    for descriptor in request_types():
        for candidate in _messages(descriptor):
            if candidate.full_name == message_name:
                return cast(FieldDescriptor, candidate.fields_by_name[field_name])
    raise KeyError(full_name)


def _messages(descriptor: Descriptor) -> Iterator[Descriptor]:
    yield descriptor
    fields = cast("list[FieldDescriptor]", list(descriptor.fields))
    for field in fields:
        if field.message_type is not None:
            yield from _messages(field.message_type)


def _needs_a_limit(full_name: str) -> bool:
    field = field_by_name(full_name)
    return field.type == FieldDescriptor.TYPE_STRING or field.is_repeated


# Text and repeated fields: what a client can make arbitrarily large.
ALL_FIELDS = sorted(
    {name for d in request_types() for name in request_fields(d) if _needs_a_limit(name)}
)


def test_every_rpc_of_the_five_services_is_covered() -> None:
    names = {descriptor.full_name for descriptor in request_types()}
    assert "shop.order.v1.PlaceOrderRequest" in names
    assert "shop.notification.v1.ListNotificationsRequest" in names
    assert {
        "shop.inventory.v1.ListStockRequest",
        "shop.inventory.v1.ListReservationsRequest",
        "shop.payment.v1.ListPaymentsRequest",
        "shop.shipping.v1.ListShipmentsRequest",
    } <= names
    assert len(names) == 13
    assert "shop.common.v1.Address.line2" in ALL_FIELDS
    assert "shop.order.v1.PlaceOrderRequest.lines" in ALL_FIELDS


@pytest.mark.parametrize("name", ALL_FIELDS)
def test_every_request_field_is_bounded_and_text_refuses_nul(name: str) -> None:
    field = field_by_name(name)
    if field.type == FieldDescriptor.TYPE_STRING:
        assert longest_string(field)  # raises when no rule bounds the length
        pattern = rules(field).string.pattern
        assert pattern, f"{name}: no pattern, so NUL and control characters get in"
        assert not re.search(pattern, "a\x00b"), f"{name}: admits NUL"
    if field.is_repeated:
        assert rules(field).repeated.HasField("max_items"), f"{name}: no item limit"


def _comparable(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """Without what generators add or drop on their own: file options, source info, and
    json_name (protoc leaves out the default one, Buf writes it)."""
    file.ClearField("options")
    file.ClearField("source_code_info")
    pending: list[descriptor_pb2.DescriptorProto] = list(file.message_type)
    for extension in file.extension:
        extension.ClearField("json_name")
    while pending:
        message = pending.pop()
        for field in (*message.field, *message.extension):
            field.ClearField("json_name")
        pending += message.nested_type
    return file


def test_the_vendored_validate_proto_is_the_schema_protovalidate_enforces() -> None:
    # protovalidate keeps its own copy of the schema under a private module, in its own
    # protobuf runtime; comparing the serialized descriptors is the only way to see it.
    theirs = descriptor_pb2.FileDescriptorProto.FromString(validate_pb.desc().proto.to_binary())
    ours = descriptor_pb2.FileDescriptorProto()
    validate_pb2.DESCRIPTOR.CopyToProto(ours)

    assert _comparable(ours) == _comparable(theirs), "update proto/buf/validate (see README)"
