"""The gRPC door: oversized, malformed and undecodable requests are refused before anything is
stored or published, over real sockets against services on the real runtime.

The limits are the ``buf.validate`` rules declared in ``proto/``; these tests send what used to
get through (a 10,000-character customer id, a 1 MiB address line, a NUL that Postgres cannot
store) and bytes that are no request at all.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from choreo.broker import EmbeddedBroker
from choreo.grpc_errors import field_violations
from choreo.request_limits import max_encoded_size, max_receive_bytes
from choreo.service import ServiceRuntime
from choreo.testing import stream_count
from services import registry
from services.settings import SagaSettings
from shop.common.v1 import address_pb2, order_line_pb2
from shop.order.v1 import order_service_pb2 as pb
from shop.order.v1 import order_service_pb2_grpc as pb_grpc
from tests.contracts.test_event_size import maximal_request
from tests.postgres import fresh_database
from tests.services import runtime_settings
from tests.services.test_order_service import lines_of, place_request, rpc_error, settle

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    Stub = pb_grpc.OrderServiceAsyncStub

# Words of a Python exception or traceback that must never reach a client.
INTERNALS = ("Traceback", "Exception", "Error parsing", "DecodeError", "Unexpected", ".py")


@pytest.fixture(params=["sqlite", "postgres"])
async def runtime(
    broker: EmbeddedBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[ServiceRuntime]:
    """The order service on SQLite, and on the local Postgres (which cannot store a NUL: on
    it, a NUL that got past the door made PlaceOrder answer UNKNOWN)."""
    settings = runtime_settings("order", broker, tmp_path)
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "postgres":
            url = await stack.enter_async_context(fresh_database("choreo_limits"))
            settings = settings.with_(database_url=url)
        service = ServiceRuntime(registry.build("order", settings, SagaSettings()), settings)
        await service.start()
        yield service
        await service.stop(grace_s=1.0)


@pytest.fixture
async def channel(runtime: ServiceRuntime) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as opened:
        yield opened


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Stub:
    return cast("Stub", pb_grpc.OrderServiceStub(channel))


async def assert_nothing_stored(runtime: ServiceRuntime, stub: Stub, js: Any) -> None:
    """No order row, no outbox row, an empty order list, and no event on the stream."""
    async with runtime.db.read() as tx:
        for table in ("orders", "choreo_outbox"):
            row = await tx.fetchone(f"SELECT COUNT(*) FROM {table}")
            assert row is not None and row[0] == 0, table
    assert list((await stub.ListOrders(pb.ListOrdersRequest(), timeout=10)).orders) == []
    await settle()
    assert await stream_count(js, "SHOP_ORDER") == 0


async def refused_fields(stub: Stub, request: pb.PlaceOrderRequest) -> list[str]:
    error = await rpc_error(stub.PlaceOrder(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    # The status message repeats the violations: it must stay short whatever was sent.
    assert len(error.details() or "") < 1000
    return [field for field, _ in field_violations(error)]


async def test_a_10000_character_customer_id_is_refused_and_nothing_is_stored(
    runtime: ServiceRuntime, stub: Stub, js: Any
) -> None:
    fields = await refused_fields(stub, place_request(customer_id="c" * 10_000))

    assert fields == ["customer_id"]
    await assert_nothing_stored(runtime, stub, js)


def raw(data: bytes) -> bytes:
    """Sends and receives bytes as they are, so a test can send what no client library would."""
    return data


def address_with_line1(line1: str) -> address_pb2.Address:
    return address_pb2.Address(
        recipient_name="Ada Lovelace",
        line1=line1,
        city="Springfield",
        postal_code="12345",
        country_code="US",
    )


async def test_a_10_kib_address_line_is_refused_naming_it_and_nothing_is_stored(
    runtime: ServiceRuntime, stub: Stub, js: Any
) -> None:
    request = place_request(shipping_address=address_with_line1("1 Main St " + "x" * 10_240))

    fields = await refused_fields(stub, request)

    assert fields == ["shipping_address.line1"]
    await assert_nothing_stored(runtime, stub, js)


async def test_the_largest_valid_request_gets_through_the_receive_limit(
    runtime: ServiceRuntime, stub: Stub
) -> None:
    """The limit is derived from the rules, so it must hold what they allow: the maximal
    request of the contract tests (every field at its longest, 100 lines) is read and judged
    on its content (its made-up SKUs are unknown to the catalog), never refused by size."""
    request = maximal_request()
    largest_valid = max_encoded_size(pb.PlaceOrderRequest.DESCRIPTOR)
    assert largest_valid is not None and request.ByteSize() <= largest_valid

    error = await rpc_error(stub.PlaceOrder(request, timeout=10))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert {field for field, _ in field_violations(error)} <= {
        f"lines[{i}].sku" for i in range(100)
    }


PLACE_ORDER = "/shop.order.v1.OrderService/PlaceOrder"


async def test_a_request_larger_than_any_valid_one_is_not_read_at_all(
    runtime: ServiceRuntime, channel: grpc.aio.Channel, stub: Stub, js: Any
) -> None:
    """The receive limit follows from the contract's limits (100 lines of at most 64-character
    SKUs ..., times a margin): far below gRPC's 4 MB, and above any valid request."""
    limit = max_receive_bytes([pb.DESCRIPTOR.services_by_name["OrderService"].full_name])
    largest_valid = max_encoded_size(pb.PlaceOrderRequest.DESCRIPTOR)
    assert largest_valid is not None and largest_valid < limit <= 128 * 1024
    oversized = {
        "1 MiB address line": place_request(
            shipping_address=address_with_line1("x" * (1024 * 1024))
        ),
        # The reported request: 100,000 lines, 2.2 MB, 1.9 s to refuse on the event loop.
        "100,000 lines": place_request(lines=lines_of(100_000, sku="SKU-" + "X" * 14)),
    }
    place = channel.unary_unary(PLACE_ORDER, request_serializer=raw, response_deserializer=raw)
    for what, request in oversized.items():
        data = request.SerializeToString()
        assert len(data) > limit, what
        started = time.perf_counter()
        error = await rpc_error(place(data, timeout=10))
        elapsed = time.perf_counter() - started
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (what, error.details())
        assert elapsed < 1.0, (what, elapsed)
    await assert_nothing_stored(runtime, stub, js)


NUL_CASES: dict[str, dict[str, Any]] = {
    "idempotency_key": {"key": "key\x00"},
    "customer_id": {"customer_id": "cust\x00-1"},
    "payment_token": {"payment_token": "tok\x00"},
    "lines[1].sku": {"lines": [*lines_of(1), *lines_of(1, sku="SKU\x00MUG")]},
    **{
        f"shipping_address.{name}": {
            "shipping_address": address_pb2.Address(
                **{
                    "recipient_name": "Ada Lovelace",
                    "line1": "1 Main Street",
                    "city": "Springfield",
                    "postal_code": "12345",
                    "country_code": "US",
                    name: "nul \x00 inside",
                }
            )
        }
        for name in ("recipient_name", "line1", "line2", "city", "postal_code", "country_code")
    },
}


async def test_a_nul_character_in_any_text_field_is_refused_naming_it_and_nothing_is_stored(
    runtime: ServiceRuntime, stub: Stub, js: Any
) -> None:
    # NUL is valid in a proto string and in SQLite, but Postgres refuses it: it must not get in.
    for field, changes in NUL_CASES.items():
        assert await refused_fields(stub, place_request(**changes)) == [field], field
    await assert_nothing_stored(runtime, stub, js)


async def test_too_many_lines_are_refused_on_lines_and_nothing_is_stored(
    runtime: ServiceRuntime, stub: Stub, js: Any
) -> None:
    for n in (101, 3_000):
        assert await refused_fields(stub, place_request(lines=lines_of(n))) == ["lines"], n
    await assert_nothing_stored(runtime, stub, js)


def most_lines_that_fit() -> pb.PlaceOrderRequest:
    """As many empty lines (2 bytes each) as the receive limit lets through: each one breaks
    its rules, and validating them one by one took longer than a few milliseconds."""
    limit = max_receive_bytes([pb.DESCRIPTOR.services_by_name["OrderService"].full_name])
    request = place_request(lines=[])
    request.lines.extend(order_line_pb2.OrderLine() for _ in range((limit - 1024) // 2))
    assert limit - 2048 < request.ByteSize() < limit
    return request


async def test_too_many_lines_are_refused_on_their_count_before_any_line_is_validated(
    runtime: ServiceRuntime, stub: Stub, js: Any
) -> None:
    request = most_lines_that_fit()
    await rpc_error(stub.PlaceOrder(place_request(lines=lines_of(101)), timeout=10))  # warm

    started = time.perf_counter()
    error = await rpc_error(stub.PlaceOrder(request, timeout=10))
    elapsed = time.perf_counter() - started

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    # Only the count: no line was looked at (each would be a violation of its own).
    assert [field for field, _ in field_violations(error)] == ["lines"]
    assert f"has {len(request.lines)} items; at most 100" in (error.details() or "")
    assert elapsed < 0.25, elapsed
    await assert_nothing_stored(runtime, stub, js)


async def test_hundreds_of_violations_still_reach_the_client_as_a_bounded_bad_request(
    runtime: ServiceRuntime, stub: Stub, js: Any
) -> None:
    # 100 lines, each with a bad SKU and a bad quantity: 200 violations would not fit in the
    # trailers a client accepts (it would see RESOURCE_EXHAUSTED and no field at all).
    request = place_request(lines=lines_of(100, sku="bad\x00sku" * 7, quantity=0))

    error = await rpc_error(stub.PlaceOrder(request, timeout=10))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    fields = [field for field, _ in field_violations(error)]
    assert fields[:2] == ["lines[0].sku", "lines[0].quantity"]
    assert len(fields) == 10  # choreo.grpc_errors.MAX_REPORTED_VIOLATIONS
    assert "(and 190 more)" in (error.details() or "")
    await assert_nothing_stored(runtime, stub, js)


UNDECODABLE = {
    "not protobuf": b"\xff\xff\xff\xff",
    "truncated": pb.PlaceOrderRequest(customer_id="cust-1").SerializeToString()[:-2],
    # Well-formed wire data, but field 2 (customer_id, a string) is not valid UTF-8.
    "invalid utf-8 in a string": b"\x12\x02\xc3\x28",
}


async def test_undecodable_bytes_get_a_clean_invalid_argument_and_nothing_is_stored(
    runtime: ServiceRuntime, channel: grpc.aio.Channel, stub: Stub, js: Any
) -> None:
    path = "/shop.order.v1.OrderService/PlaceOrder"
    place_raw = channel.unary_unary(path, request_serializer=raw, response_deserializer=raw)
    for case, data in UNDECODABLE.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await place_raw(data, timeout=10)
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, error.details())
        assert error.details() == "request is not a valid shop.order.v1.PlaceOrderRequest message"
        assert not any(word in (error.details() or "") for word in INTERNALS), case
    await assert_nothing_stored(runtime, stub, js)


# --- every RPC of every service ---


def string_paths(descriptor: Descriptor, prefix: str = "") -> Iterator[tuple[str, list[str]]]:
    """(client-facing path, attribute names to reach it) of every string field, recursively;
    repeated messages are entered through their first item (``lines[0].sku``)."""
    fields = cast("list[FieldDescriptor]", list(descriptor.fields))
    for field in fields:
        if field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated:
            yield f"{prefix}{field.name}", [field.name]
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            step = f"{field.name}[0]" if field.is_repeated else field.name
            for path, names in string_paths(field.message_type, f"{prefix}{step}."):
                yield path, [field.name, *names]


def with_nul_at(request_type: type[Message], names: list[str]) -> Message:
    request = request_type()
    target: Any = request
    for name in names[:-1]:
        child = getattr(target, name)
        target = child.add() if hasattr(child, "add") else child
    setattr(target, names[-1], "nul \x00 inside")
    return request


async def call_raw(
    channel: grpc.aio.Channel, method: MethodDescriptor, data: bytes
) -> grpc.aio.AioRpcError:
    path = f"/{method.containing_service.full_name}/{method.name}"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if method.server_streaming:
            stream = channel.unary_stream(path, request_serializer=raw, response_deserializer=raw)
            async for _ in stream(data, timeout=10):
                pass
        else:
            unary = channel.unary_unary(path, request_serializer=raw, response_deserializer=raw)
            await unary(data, timeout=10)
    return caught.value


async def test_every_rpc_of_every_service_refuses_undecodable_bytes_and_nul_in_each_text_field(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    checked: list[str] = []
    for name in registry.SERVICE_NAMES:
        settings = runtime_settings(name, broker, tmp_path)
        definition = registry.build(name, settings, SagaSettings(data_dir=tmp_path / name))
        runtime = ServiceRuntime(definition, settings)
        await runtime.start()
        try:
            address = f"127.0.0.1:{runtime.grpc_port}"
            async with grpc.aio.insecure_channel(address) as channel:
                for service_name in definition.grpc_services:
                    service = descriptor_pool.Default().FindServiceByName(service_name)
                    for method in service.methods:
                        request_type = message_factory.GetMessageClass(method.input_type)
                        garbage = await call_raw(channel, method, b"\xff\xff\xff\xff")
                        assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT, method.name
                        details = garbage.details() or ""
                        assert not any(word in details for word in INTERNALS), details
                        for path, names in string_paths(method.input_type):
                            data = with_nul_at(request_type, names).SerializeToString()
                            error = await call_raw(channel, method, data)
                            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, path
                            assert path in [field for field, _ in field_violations(error)], path
                            checked.append(f"{method.full_name}: {path}")
        finally:
            await runtime.stop(grace_s=1.0)

    # Every query RPC has an id to check, and PlaceOrder all of its text.
    assert "shop.order.v1.OrderService.PlaceOrder: shipping_address.line2" in checked
    assert "shop.notification.v1.NotificationService.ListNotifications: page_token" in checked
    assert len(checked) >= 20
