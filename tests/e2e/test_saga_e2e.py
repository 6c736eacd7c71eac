"""The saga end to end: a real broker, the five services as separate processes, real gRPC."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import grpc
import nats
import pytest

from choreo import contracts, grpc_errors, subjects, timeline
from choreo.envelope import H_SUBJECT, H_TYPE
from choreo.streamread import read_stream
from choreo.testing import wait_for
from services import payment_token
from services.demo import check_bad_input
from services.system import System, SystemConfig
from services.workload import (
    REFUSED_BY_SIZE_ABOVE,
    SagaPath,
    bad_requests,
    place_all,
    request_for,
    wait_until_final,
)
from shop.order.v1 import order_service_pb2 as order_pb
from shop.order.v1 import order_service_pb2_grpc as order_grpc
from shop.payment.v1 import payment_service_pb2 as payment_pb
from shop.payment.v1 import payment_service_pb2_grpc as payment_grpc
from tests.e2e import audit_quiet_system
from tests.postgres import drop_databases, unique_base_url

BATCH = int(os.environ.get("CHOREO_E2E_SAGAS", "300"))

EXPECTED_EVENTS = {
    SagaPath.HAPPY: Counter(
        OrderCreated=1,
        InventoryReserved=1,
        PaymentCompleted=1,
        OrderConfirmed=1,
        ShipmentCreated=1,
        OrderShipped=1,
        InventoryShipped=1,
        NotificationSent=1,
    ),
    SagaPath.OUT_OF_STOCK: Counter(
        OrderCreated=1, InventoryReservationFailed=1, OrderCancelled=1, NotificationSent=1
    ),
    SagaPath.PAYMENT_DECLINED: Counter(
        OrderCreated=1,
        InventoryReserved=1,
        PaymentFailed=1,
        InventoryReleased=1,
        OrderCancelled=1,
        NotificationSent=1,
    ),
    SagaPath.UNSERVICEABLE: Counter(
        OrderCreated=1,
        InventoryReserved=1,
        PaymentCompleted=1,
        ShippingFailed=1,
        PaymentRefunded=1,
        InventoryReleased=1,
        OrderCancelled=1,
        NotificationSent=1,
    ),
}
EXPECTED_STATUS = {
    SagaPath.HAPPY: order_pb.ORDER_STATUS_SHIPPED,
    SagaPath.OUT_OF_STOCK: order_pb.ORDER_STATUS_CANCELLED,
    SagaPath.PAYMENT_DECLINED: order_pb.ORDER_STATUS_CANCELLED,
    SagaPath.UNSERVICEABLE: order_pb.ORDER_STATUS_CANCELLED,
}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """The whole system as processes, on SQLite files, then on the local Postgres (one fresh
    database per service, created by the system and dropped here)."""
    config = SystemConfig(data_dir=tmp_path_factory.mktemp("system"), grpc_base_port=None)
    if request.param == "postgres":
        config.store = "postgres"
        config.database_url = unique_base_url("choreo_e2e")
    running = System(config)
    try:
        asyncio.run(running.start())
        yield running
        codes = running.stop()
        assert all(code == 0 for code in codes.values()), f"unclean shutdown: {codes}"
    finally:
        running.stop()
        if config.store == "postgres":
            asyncio.run(drop_databases(running.database_urls.values()))


def order_stub(channel: grpc.aio.Channel) -> order_grpc.OrderServiceAsyncStub:
    return order_grpc.OrderServiceStub(channel)


@pytest.mark.parametrize("path", list(SagaPath))
async def test_each_path_ends_in_its_final_state_with_exactly_its_events(
    system: System, path: SagaPath
) -> None:
    async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
        stub = order_stub(channel)
        request = request_for(path, random.randrange(10**6), random.Random(1))
        placed = (await stub.PlaceOrder(request, timeout=10)).order
        assert placed.status == order_pb.ORDER_STATUS_PENDING
        assert placed.correlation_id == placed.order_id

        statuses = [
            update.order.status
            async for update in stub.WatchOrder(
                order_pb.WatchOrderRequest(order_id=placed.order_id), timeout=60
            )
        ]
        final = (await stub.GetOrder(order_pb.GetOrderRequest(order_id=placed.order_id))).order
    assert final.status == EXPECTED_STATUS[path]
    assert statuses[-1] == EXPECTED_STATUS[path]
    assert final.customer_notified

    expected = EXPECTED_EVENTS[path]
    seen: Counter[str] = Counter()

    async def every_expected_event_published() -> bool:
        # The order is final and its customer told, but some events are off that path and may
        # still be on their way: InventoryShipped, InventoryReleased, PaymentRefunded.
        nonlocal seen
        steps = await timeline.saga_steps(js, placed.order_id)
        seen = Counter(step.event_type for step in steps)
        return all(seen[name] >= n for name, n in expected.items())

    nc = await nats.connect(system.nats_url)
    try:
        js = nc.jetstream()
        await wait_for(every_expected_event_published, timeout=30, what=f"the events of {path}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {seen}") from None
    finally:
        await nc.close()
    if path is SagaPath.UNSERVICEABLE:
        # Order confirms in parallel with shipping; if ShippingFailed wins the race, the
        # cancelled order ignores the late PaymentCompleted and never confirms.
        assert seen.pop("OrderConfirmed", 0) in (0, 1)
    assert seen == expected, f"{path}: {seen}"

    if path is SagaPath.UNSERVICEABLE:
        async with grpc.aio.insecure_channel(system.addresses["payment"]) as channel:
            payments: payment_grpc.PaymentServiceAsyncStub = payment_grpc.PaymentServiceStub(
                channel
            )
            payment = (
                await payments.GetPayment(payment_pb.GetPaymentRequest(order_id=placed.order_id))
            ).payment
        assert payment.status == payment_pb.PAYMENT_STATUS_REFUNDED


async def test_bad_requests_are_refused_naming_the_field_and_change_nothing(
    system: System,
) -> None:
    async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
        stub = order_stub(channel)
        assert await check_bad_input(stub) == []
        for what, request, expected_field in bad_requests():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.PlaceOrder(request, timeout=10)
            code = refused.value.code()
            fields = [field for field, _ in grpc_errors.field_violations(refused.value)]
            if request.ByteSize() > REFUSED_BY_SIZE_ABOVE:
                # Larger than any valid request: refused by its size, before it is read.
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, what
            else:
                assert code == grpc.StatusCode.INVALID_ARGUMENT, what
                assert expected_field in fields, f"{what}: {fields}"
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetOrder(order_pb.GetOrderRequest(order_id="no-such-order"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_concurrent_batch_of_mixed_orders_all_end_and_invariants_hold(
    system: System, tmp_path: Path
) -> None:
    paths = [SagaPath.HAPPY] * (BATCH * 7 // 10)
    failures = [SagaPath.OUT_OF_STOCK, SagaPath.PAYMENT_DECLINED, SagaPath.UNSERVICEABLE]
    paths += [failures[i % 3] for i in range(BATCH - len(paths))]
    random.Random(3).shuffle(paths)
    async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
        stub = order_stub(channel)
        placed = await place_all(stub, paths, concurrency=32, seed=11)
        stuck = await wait_until_final(stub, placed, timeout=240)
    assert not stuck, f"{len(stuck)} sagas did not finish, e.g. {stuck[:3]}"
    wrong = [p for p in placed if p.status != EXPECTED_STATUS[p.path]]
    assert not wrong, f"{len(wrong)} ended in the wrong state, e.g. {wrong[:3]}"

    report = await audit_quiet_system(system)
    assert report.violations == []
    assert report.orders >= BATCH
    if system.config.store == "postgres":
        # The orders really live in the order service's own Postgres database.
        connection = await asyncpg.connect(system.database_urls["order"])
        try:
            assert await connection.fetchval("SELECT COUNT(*) FROM orders") >= BATCH
            assert await connection.fetchval("SELECT COUNT(*) FROM choreo_outbox") == 0
        finally:
            await connection.close()
    assert not report.dead_letters, report.dead_letters


def test_operators_see_lag_and_the_audit_from_the_command_line(system: System) -> None:
    """`choreo lag` and `choreo audit` against the running system (after the batch above)."""
    import subprocess
    import sys

    def choreo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "choreo.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    lag = choreo("lag", "--nats-url", system.nats_url)
    assert lag.returncode == 0, lag.stderr
    assert "inventory__shop_order_v1_OrderCreated" in lag.stdout
    rows = [line.split() for line in lag.stdout.splitlines()[1:]]
    assert len(rows) == len(contracts.choreography())  # one durable per edge of the flow table
    assert all(row[1] == "0" and row[2] == "0" for row in rows), lag.stdout  # quiet system
    audited = choreo(
        "audit",
        "--nats-url",
        system.nats_url,
        "--order-address",
        system.addresses["order"],
        "--inventory-address",
        system.addresses["inventory"],
        "--data-dir",
        str(system.config.data_dir),
    )
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "0 violation(s)" in audited.stdout


def test_the_order_cli_places_and_watches_an_order_to_its_end(system: System) -> None:
    import subprocess
    import sys

    placed = subprocess.run(
        [
            sys.executable,
            "-m",
            "choreo.cli",
            "order",
            "--address",
            system.addresses["order"],
            "place",
            "--customer",
            "cust-alice",
            "--line",
            "SKU-MUG:2",
            "--line",
            "SKU-PEN:1",
            "--watch",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert placed.returncode == 0, placed.stderr
    lines = placed.stdout.strip().splitlines()
    assert "PENDING" in lines[0]
    assert "SHIPPED" in lines[-1] and "customer notified" in lines[-1]


async def test_every_service_answers_health_and_reflection(system: System) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    expected = {
        "order": "shop.order.v1.OrderService",
        "inventory": "shop.inventory.v1.InventoryService",
        "payment": "shop.payment.v1.PaymentService",
        "shipping": "shop.shipping.v1.ShippingService",
        "notification": "shop.notification.v1.NotificationService",
    }
    for name, service in expected.items():
        async with grpc.aio.insecure_channel(system.addresses[name]) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for response in reflection.ServerReflectionInfo(iter([request])):
                names = {s.name for s in response.list_services_response.service}
                assert service in names and "grpc.health.v1.Health" in names


async def test_the_payment_token_is_sealed_on_the_bus_and_only_payment_holds_the_key(
    system: System,
) -> None:
    """``choreo up`` made one key pair in the data folder and gave each half to the one
    service that needs it; a saga completes, and no stored byte of the order or inventory
    streams holds its token."""
    private, public = payment_token.default_key_files(system.config.data_dir.resolve())
    assert private.stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" not in public.read_bytes()
    assert system.supervisor is not None
    for name, managed in system.supervisor.processes.items():
        env = managed.spec.env
        assert (payment_token.PUBLIC_KEY_SETTING in env) == (name == "order"), name
        assert (payment_token.PRIVATE_KEY_SETTING in env) == (name == "payment"), name

    token = f"tok_visa_{random.randrange(10**12)}"
    async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
        stub = order_stub(channel)
        request = request_for(SagaPath.HAPPY, random.randrange(10**6), random.Random(5))
        request.payment_token = token
        placed = (await stub.PlaceOrder(request, timeout=10)).order
        async for update in stub.WatchOrder(
            order_pb.WatchOrderRequest(order_id=placed.order_id), timeout=60
        ):
            final = update.order
    assert final.status == order_pb.ORDER_STATUS_SHIPPED  # payment opened and charged it

    nc = await nats.connect(system.nats_url)
    try:
        js = nc.jetstream()
        stored = [
            message
            for context in ("shop.order", "shop.inventory")
            for message in await read_stream(js, subjects.stream_name(context))
        ]
    finally:
        await nc.close()
    mine = [m for m in stored if m.headers.get(H_SUBJECT) == placed.order_id]
    assert {m.headers[H_TYPE].rsplit(".", 1)[-1] for m in mine} >= {
        "OrderCreated",
        "InventoryReserved",
    }
    assert not [m for m in stored if token.encode() in m.data]
    carriers = ("shop.order.v1.OrderCreated", "shop.inventory.v1.InventoryReserved")
    assert all(b"sealed:v1:" in m.data for m in mine if m.headers[H_TYPE] in carriers)
