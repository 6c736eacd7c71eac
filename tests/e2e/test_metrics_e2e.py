"""Metrics end to end: the five services as processes, each serving Prometheus ``/metrics``;
orders move the consumer, RPC and saga figures."""

from __future__ import annotations

import asyncio
import random
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.system import System, SystemConfig
from services.workload import SagaPath, place_all, wait_until_final
from shop.order.v1 import order_service_pb2_grpc as order_grpc

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series carrying ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def present(samples: Samples, name: str) -> bool:
    return any(n == name for n, _ in samples)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    config = SystemConfig(data_dir=tmp_path_factory.mktemp("metrics"), grpc_base_port=None)
    running = System(config)
    try:
        asyncio.run(running.start())
        yield running
    finally:
        running.stop()


async def test_every_service_exports_metrics_that_move_with_orders(system: System) -> None:
    assert set(system.metrics_addresses) == set(system.addresses)
    before = {name: scrape(address) for name, address in system.metrics_addresses.items()}

    paths = [SagaPath.HAPPY] * 3 + [SagaPath.OUT_OF_STOCK, SagaPath.PAYMENT_DECLINED]
    async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
        stub: order_grpc.OrderServiceAsyncStub = order_grpc.OrderServiceStub(channel)
        placed = await place_all(stub, paths, concurrency=5, seed=random.randrange(10**6))
        assert await wait_until_final(stub, placed, timeout=60) == []

    # The broker and outbox gauges are refreshed every few seconds: wait for one round.
    await asyncio.sleep(6)
    after = {name: scrape(address) for name, address in system.metrics_addresses.items()}

    for name in system.metrics_addresses:
        # Every service handled events of these sagas (order: payment, shipping, notification).
        handled_before = total(before[name], "choreo_consumer_messages_total", outcome="handled")
        handled_after = total(after[name], "choreo_consumer_messages_total", outcome="handled")
        assert handled_after > handled_before, name
        assert total(after[name], "choreo_handler_duration_seconds_count") >= handled_after - (
            handled_before
        )
        assert present(after[name], "choreo_outbox_backlog"), name
        assert present(after[name], "choreo_outbox_oldest_age_seconds"), name
        assert present(after[name], "choreo_consumer_pending"), name
        assert present(after[name], "choreo_consumer_ack_pending"), name
        published = total(after[name], "choreo_relay_published_total")
        assert published > total(before[name], "choreo_relay_published_total"), name

    order = after["order"]
    placed_calls = total(
        order,
        "choreo_rpc_server_requests_total",
        method="/shop.order.v1.OrderService/PlaceOrder",
        code="OK",
    )
    assert placed_calls - total(
        before["order"],
        "choreo_rpc_server_requests_total",
        method="/shop.order.v1.OrderService/PlaceOrder",
        code="OK",
    ) == len(paths)
    assert (
        total(
            order,
            "choreo_rpc_server_requests_total",
            method="/shop.order.v1.OrderService/ListOrders",
        )
        > 0
    )
    # Health checks are polled by supervisors: they are not counted as API calls.
    assert (
        total(order, "choreo_rpc_server_requests_total", method="/grpc.health.v1.Health/Check") == 0
    )
    assert total(order, "choreo_saga_duration_seconds_count", outcome="shipped") >= 3
    assert total(order, "choreo_saga_duration_seconds_count", outcome="cancelled") >= 2
    assert total(order, "choreo_saga_duration_seconds_sum") > 0
    # Once quiet, nothing waits in the outbox and the consumers are caught up.
    for name in system.metrics_addresses:
        assert total(after[name], "choreo_consumer_pending") == 0, name
