"""Any PlaceOrderRequest: a valid order, or INVALID_ARGUMENT naming fields and no state change.

Checked twice: on the pure validation, and through a real order service over gRPC (real
nats-server, real SQLite), counting orders and OrderCreated events before and after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from choreo.broker import EmbeddedBroker
from choreo.service import ServiceRuntime
from choreo.settings import RuntimeSettings
from choreo.testing import stream_count
from services.catalog import load_catalog
from services.order import domain, mapping
from services.order.service import build
from services.settings import SagaSettings
from shop.common.v1 import address_pb2, order_line_pb2
from shop.order.v1 import order_service_pb2 as pb
from shop.order.v1 import order_service_pb2_grpc as pb_grpc

CATALOG = load_catalog(SagaSettings().catalog_path)
SKUS = sorted(CATALOG.products)
short = st.text(max_size=12)

lines = st.lists(
    st.builds(
        order_line_pb2.OrderLine,
        sku=st.one_of(st.sampled_from(SKUS), short),
        quantity=st.one_of(st.integers(-5, 1005), st.integers(-(2**31), 2**31 - 1)),
    ),
    max_size=104,
)
addresses = st.one_of(
    st.none(),
    st.builds(
        address_pb2.Address,
        recipient_name=short,
        line1=short,
        city=short,
        postal_code=short,
        country_code=st.one_of(st.sampled_from(["US", "GB", "AQ", "us", "USA", ""]), short),
    ),
)


@st.composite
def requests(draw: Any) -> pb.PlaceOrderRequest:
    request = pb.PlaceOrderRequest(
        idempotency_key=draw(st.one_of(st.uuids().map(str), short, st.text(min_size=129))),
        customer_id=draw(st.one_of(st.just("cust-alice"), short)),
        lines=draw(lines),
        currency_code=draw(st.one_of(st.sampled_from(["USD", "EUR", "usd", "XXX", ""]), short)),
        payment_token=draw(st.one_of(st.just("tok_visa"), short)),
    )
    address = draw(addresses)
    if address is not None:
        request.shipping_address.CopyFrom(address)
    return request


@settings(max_examples=300, deadline=None)
@given(request=requests())
def test_validation_never_crashes_and_valid_orders_add_up(request: pb.PlaceOrderRequest) -> None:
    command = mapping.place_order_from_proto(request)
    violations = domain.validate_place_order(command, CATALOG)
    for violation in violations:
        assert violation.field and violation.description
    if not violations:
        priced = domain.price_lines(command.lines, CATALOG)
        assert sum(line.quantity * line.unit_price.amount_minor for line in priced) > 0


@pytest.fixture(scope="module")
def order_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, Any]]:
    tmp: Path = tmp_path_factory.mktemp("order")
    broker = EmbeddedBroker(store_dir=tmp / "js")
    broker.start()
    loop = asyncio.new_event_loop()
    settings_ = RuntimeSettings(
        service="order",
        nats_url=broker.url,
        database_url=f"sqlite:///{tmp}/order.db",
        fetch_timeout_s=0.2,
        relay_sweep_interval_s=0.2,
    )
    runtime = ServiceRuntime(build(settings_, SagaSettings(data_dir=tmp)), settings_)
    loop.run_until_complete(runtime.start())

    async def open_channel() -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")

    channel = loop.run_until_complete(open_channel())  # a channel belongs to its loop
    nc = loop.run_until_complete(nats.connect(broker.url))
    yield loop, pb_grpc.OrderServiceStub(channel), nc.jetstream()
    loop.run_until_complete(nc.close())
    loop.run_until_complete(channel.close())
    loop.run_until_complete(runtime.stop())
    loop.close()
    broker.stop()


async def _state(stub: Any, js: Any) -> tuple[int, int]:
    orders = await stub.ListOrders(pb.ListOrdersRequest(page_size=500))
    return len(orders.orders), await stream_count(js, "SHOP_ORDER")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=requests())
def test_through_grpc_any_request_is_an_order_or_a_named_refusal_that_changes_nothing(
    order_service: tuple[Any, Any, Any], request: pb.PlaceOrderRequest
) -> None:
    loop, stub, js = order_service

    async def check() -> None:
        before = await _state(stub, js)
        try:
            response = await stub.PlaceOrder(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert "invalid request" in (error.details() or "")
            assert await _state(stub, js) == before
            return
        assert response.order.order_id
        assert response.order.total.amount_minor > 0

    loop.run_until_complete(check())
