"""Health end to end: every service says NOT_SERVING while the broker is gone and SERVING
again once it is back, without any process being restarted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.system import System, SystemConfig

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    config = SystemConfig(data_dir=tmp_path_factory.mktemp("health"), grpc_base_port=None)
    running = System(config)
    try:
        asyncio.run(running.start())
        yield running
    finally:
        running.stop()


async def check(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(reply.status)


async def statuses(system: System) -> dict[str, int]:
    names = list(system.addresses)
    replies = await asyncio.gather(*(check(system.addresses[name]) for name in names))
    return dict(zip(names, replies, strict=True))


async def seconds_until(system: System, wanted: int, limit: float) -> float:
    """How long until every service reports ``wanted``; fails after ``limit`` seconds."""
    began = time.monotonic()
    seen: dict[str, int] = {}
    while time.monotonic() - began < limit:
        seen = await statuses(system)
        if all(status == wanted for status in seen.values()):
            return time.monotonic() - began
        await asyncio.sleep(0.1)
    raise AssertionError(f"not all {wanted} after {limit}s: {seen}")


async def test_health_follows_the_broker_and_no_process_restarts(system: System) -> None:
    assert system.broker is not None and system.supervisor is not None
    assert set((await statuses(system)).values()) == {SERVING}

    system.broker.kill()
    took_down = await seconds_until(system, NOT_SERVING, limit=5)
    # The service's own gRPC name follows the overall status.
    order_api = "shop.order.v1.OrderService"
    assert await check(system.addresses["order"], order_api) == NOT_SERVING

    system.broker.start()
    took_up = await seconds_until(system, SERVING, limit=15)
    assert await check(system.addresses["order"], order_api) == SERVING
    print(f"NOT_SERVING {took_down:.2f}s after the broker died; SERVING {took_up:.2f}s after")

    for name, managed in system.supervisor.processes.items():
        assert managed.alive(), name
        assert managed.starts == 1, name
