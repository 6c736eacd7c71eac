"""examples/loyalty: a sixth service in another team's proto package (acme.loyalty.v1), run by
the unchanged runtime (`choreo serve loyalty --app acme_loyalty.service:build`) as a real
process beside the five reference services, on a real nats-server and SQLite files."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from acme.loyalty.v1 import events_pb2 as loyalty_events
from acme.loyalty.v1 import loyalty_service_pb2 as loyalty_pb
from acme.loyalty.v1 import loyalty_service_pb2_grpc as loyalty_grpc

from acme_loyalty import domain
from choreo import grpc_errors, subjects
from choreo.broker import EmbeddedBroker, free_port
from choreo.streamread import read_stream
from choreo.supervisor import ProcessSpec, Supervisor
from choreo.testing import publish_event, wait_for
from services.system import System, SystemConfig
from services.workload import SagaPath, request_for
from shop.common.v1 import money_pb2
from shop.order.v1 import events_pb2 as order_events
from shop.order.v1 import order_service_pb2 as order_pb
from shop.order.v1 import order_service_pb2_grpc as order_grpc
from shop.payment.v1 import events_pb2 as payment_events
from tests.examples import LOYALTY, LOYALTY_PATHS

CHOREO = str(Path(sys.executable).parent / "choreo")


def loyalty_spec(nats_url: str, data_dir: Path) -> ProcessSpec:
    """The loyalty service as its team deploys it: the runtime's CLI, their package on the
    path, their database."""
    port = free_port("127.0.0.1")
    return ProcessSpec(
        name="loyalty",
        argv=[CHOREO, "serve", "loyalty", "--app", "acme_loyalty.service:build"],
        env={
            "PYTHONPATH": os.pathsep.join(LOYALTY_PATHS),
            "CHOREO_NATS_URL": nats_url,
            "CHOREO_DATABASE_URL": f"sqlite:///{data_dir / 'loyalty.db'}",
            "CHOREO_GRPC_HOST": "127.0.0.1",
            "CHOREO_GRPC_PORT": str(port),
        },
        grpc_address=f"127.0.0.1:{port}",
        log_path=data_dir / "loyalty.log",
    )


async def order_points(
    stub: loyalty_grpc.LoyaltyServiceAsyncStub, order_id: str
) -> loyalty_pb.GetOrderPointsResponse | None:
    try:
        return await stub.GetOrderPoints(loyalty_pb.GetOrderPointsRequest(order_id=order_id))
    except grpc.aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.NOT_FOUND:
            return None
        raise


async def wait_for_status(
    stub: loyalty_grpc.LoyaltyServiceAsyncStub, order_id: str, status: int, timeout: float = 30.0
) -> loyalty_pb.GetOrderPointsResponse:
    found: list[loyalty_pb.GetOrderPointsResponse] = []

    async def reached() -> bool:
        points = await order_points(stub, order_id)
        found[:] = [points] if points is not None else []
        return points is not None and points.status == status

    await wait_for(reached, timeout=timeout, what=f"order {order_id} in status {status}")
    return found[0]


def test_the_generated_code_is_what_the_loyalty_protos_generate() -> None:
    result = subprocess.run(
        [str(LOYALTY / "gen.sh"), "--check"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_order_of_payment_and_cancellation_does_not_change_the_end_state() -> None:
    paid_first = domain.on_paid(None, "o-1", "c-1", 12_345)
    assert paid_first == domain.OrderPoints("o-1", "c-1", 123, domain.Status.AWARDED)
    revoked = domain.on_cancelled(paid_first, "o-1", "c-1")
    assert revoked.status is domain.Status.REVOKED and revoked.points == 123

    cancelled_first = domain.on_cancelled(None, "o-1", "c-1")
    assert cancelled_first.status is domain.Status.VOID
    assert domain.on_paid(cancelled_first, "o-1", "c-1", 12_345) is None  # earns nothing late
    assert domain.on_cancelled(revoked, "o-1", "c-1") == revoked  # a second cancel: no change


# --- the loyalty process alone, fed the reference system's events --------------------------


@pytest.fixture
async def loyalty_alone(
    broker: EmbeddedBroker, tmp_path: Path
) -> AsyncIterator[loyalty_grpc.LoyaltyServiceAsyncStub]:
    supervisor = Supervisor([loyalty_spec(broker.url, tmp_path)])
    await supervisor.start_all(timeout=60)
    address = supervisor.processes["loyalty"].spec.grpc_address
    assert address is not None
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            yield loyalty_grpc.LoyaltyServiceStub(channel)
    finally:
        codes = supervisor.stop_all()
        assert codes == {"loyalty": 0}, f"unclean shutdown: {codes}"


async def test_a_cancellation_before_the_payment_voids_the_order_s_points(
    loyalty_alone: loyalty_grpc.LoyaltyServiceAsyncStub, js: Any
) -> None:
    order_id, customer = f"o-{uuid.uuid4().hex[:12]}", f"c-{uuid.uuid4().hex[:12]}"
    await publish_event(
        js,
        order_events.OrderCancelled(order_id=order_id, customer_id=customer),
        aggregate_id=order_id,
        correlation_id=order_id,
    )
    void = await wait_for_status(loyalty_alone, order_id, loyalty_pb.ORDER_POINTS_STATUS_VOID)
    assert void.points == 0

    # The late payment (another stream, another durable) is handled, and earns nothing.
    await publish_event(
        js,
        payment_events.PaymentCompleted(
            order_id=order_id,
            customer_id=customer,
            amount=money_pb2.Money(amount_minor=5_000, currency_code="USD"),
        ),
        aggregate_id=order_id,
        correlation_id=order_id,
    )

    async def payment_handled() -> bool:
        info = await js.consumer_info(
            "SHOP_PAYMENT",
            subjects.durable_name("loyalty", "shop.payment.v1.PaymentCompleted"),
        )
        delivered = bool(info.delivered.stream_seq)
        return delivered and info.num_pending == 0 and info.num_ack_pending == 0

    await wait_for(payment_handled, timeout=30, what="loyalty to handle PaymentCompleted")
    after = await order_points(loyalty_alone, order_id)
    assert after is not None and after.status == loyalty_pb.ORDER_POINTS_STATUS_VOID
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await loyalty_alone.GetAccount(loyalty_pb.GetAccountRequest(customer_id=customer))
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND


async def test_bad_requests_get_invalid_argument_naming_the_field(
    loyalty_alone: loyalty_grpc.LoyaltyServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await loyalty_alone.GetOrderPoints(loyalty_pb.GetOrderPointsRequest(order_id="no spaces"))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in grpc_errors.field_violations(refused.value)] == ["order_id"]


# --- beside the five reference services ------------------------------------------------------


@pytest.fixture(scope="module")
def system_with_loyalty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, str]]:
    """The five services and the loyalty service, each a process, on one embedded broker."""
    data_dir = tmp_path_factory.mktemp("system")
    running = System(SystemConfig(data_dir=data_dir, grpc_base_port=None))
    loyalty = None
    try:
        asyncio.run(running.start())
        loyalty = Supervisor([loyalty_spec(running.nats_url, data_dir)])
        asyncio.run(loyalty.start_all(timeout=60))
        address = loyalty.processes["loyalty"].spec.grpc_address
        assert address is not None
        yield running, address
        assert loyalty.stop_all() == {"loyalty": 0}
        codes = running.stop()
        assert all(code == 0 for code in codes.values()), f"unclean shutdown: {codes}"
    finally:
        if loyalty is not None:
            loyalty.stop_all()
        running.stop()


async def place_and_finish(system: System, path: SagaPath) -> order_pb.Order:
    request = request_for(path, random.randrange(1_000_000), random.Random())
    request.customer_id = f"cust-loyal-{uuid.uuid4().hex[:10]}"
    async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
        orders = order_grpc.OrderServiceStub(channel)
        placed = await orders.PlaceOrder(request)
        final = placed.order
        async for update in orders.WatchOrder(
            order_pb.WatchOrderRequest(order_id=placed.order.order_id), timeout=60
        ):
            final = update.order
    return final


async def loyalty_events_of(system: System, order_id: str) -> list[str]:
    """The loyalty events of one saga, read from its own stream by the saga's subject filter."""
    nc = await system.connect()
    try:
        messages = await read_stream(
            nc.jetstream(),
            subjects.stream_name("acme.loyalty"),
            subjects.saga_filter("acme.loyalty", order_id),
        )
    finally:
        await nc.close()
    assert all(m.headers["ce-correlationid"] == order_id for m in messages)
    return [m.headers["ce-type"] for m in messages]


async def test_a_shipped_order_earns_points_and_a_cancelled_paid_order_gives_them_back(
    system_with_loyalty: tuple[System, str],
) -> None:
    system, loyalty_address = system_with_loyalty
    shipped, refused = await asyncio.gather(
        place_and_finish(system, SagaPath.HAPPY),
        place_and_finish(system, SagaPath.UNSERVICEABLE),  # paid, then shipping fails: cancelled
    )
    assert shipped.status == order_pb.ORDER_STATUS_SHIPPED
    assert refused.status == order_pb.ORDER_STATUS_CANCELLED

    async with grpc.aio.insecure_channel(loyalty_address) as channel:
        loyalty = loyalty_grpc.LoyaltyServiceStub(channel)
        earned = await wait_for_status(
            loyalty, shipped.order_id, loyalty_pb.ORDER_POINTS_STATUS_AWARDED
        )
        expected = domain.points_for(shipped.total.amount_minor)
        assert expected > 0
        assert (earned.customer_id, earned.points) == (shipped.customer_id, expected)
        account = await loyalty.GetAccount(
            loyalty_pb.GetAccountRequest(customer_id=shipped.customer_id)
        )
        assert account.balance == expected

        # The compensation: the refused order was paid (points credited), then cancelled.
        revoked = await wait_for_status(
            loyalty, refused.order_id, loyalty_pb.ORDER_POINTS_STATUS_REVOKED
        )
        assert revoked.points == domain.points_for(refused.total.amount_minor) > 0
        account = await loyalty.GetAccount(
            loyalty_pb.GetAccountRequest(customer_id=refused.customer_id)
        )
        assert account.balance == 0

    awarded, taken_back = (loyalty_events.PointsAwarded, loyalty_events.PointsRevoked)
    full = [awarded.DESCRIPTOR.full_name, taken_back.DESCRIPTOR.full_name]
    # The points' states above are committed before their events leave the outbox: wait for
    # as many events as expected, then compare them.
    for order_id, expected_events in ((shipped.order_id, full[:1]), (refused.order_id, full)):

        async def published(order_id: str = order_id, n: int = len(expected_events)) -> bool:
            return len(await loyalty_events_of(system, order_id)) >= n

        await wait_for(published, timeout=30, what=f"the loyalty events of {order_id}")
        assert await loyalty_events_of(system, order_id) == expected_events
    # The runtime named everything from the descriptors: the service's own stream and durables.
    nc = await system.connect()
    try:
        js = nc.jetstream()
        stream = await js.stream_info("ACME_LOYALTY")
        assert stream.config.subjects == ["acme.loyalty.>"]
        durables = {info.name for info in await js.consumers_info("SHOP_PAYMENT")}
        assert "loyalty__shop_payment_v1_PaymentCompleted" in durables
    finally:
        await nc.close()
