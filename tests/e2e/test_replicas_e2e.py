"""Two replicas of every service on Postgres (``choreo up --replicas 2 --store postgres``):
they compete for events on shared durable consumers and share each service's database; a mix
of sagas all ends in its expected state and the audit finds no violation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from choreo.testing import wait_for
from services.registry import SERVICE_NAMES
from services.system import System, SystemConfig
from services.workload import mixed_paths, place_all, wait_until_final
from shop.order.v1 import order_service_pb2_grpc as order_grpc
from tests.e2e import audit_quiet_system
from tests.postgres import drop_databases, unique_base_url

SAGAS = 120


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    config = SystemConfig(
        data_dir=tmp_path / "system",
        grpc_base_port=None,
        store="postgres",
        database_url=unique_base_url("choreo_rep"),
        replicas=2,
    )
    running = System(config)
    try:
        await running.start()
        yield running
    finally:
        codes = running.stop()
        await drop_databases(running.database_urls.values())
    assert all(code == 0 for code in codes.values()), f"unclean shutdown: {codes}"


async def test_two_replicas_per_service_on_postgres_run_every_saga_to_its_end(
    system: System,
) -> None:
    assert sorted(system.replica_addresses) == sorted(
        [*SERVICE_NAMES, *(f"{name}-2" for name in SERVICE_NAMES)]
    )
    for process, address in system.replica_addresses.items():
        async with grpc.aio.insecure_channel(address) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, process

    started = time.monotonic()
    paths = mixed_paths(SAGAS, seed=5)
    async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
        stub = order_grpc.OrderServiceStub(channel)
        placed = await place_all(stub, paths, concurrency=16, seed=9)
        stuck = await wait_until_final(stub, placed, timeout=120)
    assert not stuck, f"{len(stuck)} sagas did not finish, e.g. {stuck[:3]}"
    wrong = [p for p in placed if p.status != p.path.expected_status]
    assert not wrong, f"{len(wrong)} ended in the wrong state, e.g. {wrong[:3]}"

    report = await audit_quiet_system(system)
    print(f"{SAGAS} sagas on 2 replicas per service in {time.monotonic() - started:.1f}s")
    assert report.violations == []

    async def both_replicas_pull() -> bool:
        # Each replica keeps a pull request waiting on the one durable consumer they share.
        info = await js.consumer_info("SHOP_ORDER", "inventory__shop_order_v1_OrderCreated")
        return bool(info.num_waiting >= 2)

    nc = await nats.connect(system.nats_url)
    js = nc.jetstream()
    try:
        await wait_for(both_replicas_pull, timeout=10, what="two waiting pulls on one durable")
        consumers = await js.consumers_info("SHOP_ORDER")
        assert [c.name for c in consumers].count("inventory__shop_order_v1_OrderCreated") == 1
    finally:
        await nc.close()
