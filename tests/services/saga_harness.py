"""The five saga services in this process, on a real nats-server, with settings given as
``CHOREO_*`` variables (as a deployment would) and the fake providers at hand, so a test can
make the gateway or the carrier fail, hang or come back, and read their ledgers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from choreo.broker import EmbeddedBroker
from choreo.service import ServiceRuntime
from choreo.settings import RuntimeSettings
from services import registry
from services.inventory import store as inventory_store
from services.inventory.domain import StockLevel
from services.order import store as order_store
from services.order.domain import Order
from services.payment.gateway import FakePaymentGateway, LedgerCounts
from services.settings import SagaSettings
from services.shipping.provider import FakeShippingProvider, ShippingLedgerCounts
from services.workload import SagaPath, request_for
from shop.order.v1 import order_service_pb2 as order_pb
from shop.order.v1 import order_service_pb2_grpc as order_grpc
from tests.services import channel

# Small budgets: a step gives up after 3 attempts within about a second.
FAST = {
    "CHOREO_FETCH_TIMEOUT_S": "0.2",
    "CHOREO_RELAY_SWEEP_INTERVAL_S": "0.2",
    "CHOREO_MAX_DELIVERIES": "3",
    "CHOREO_BACKOFF_BASE_S": "0.05",
    "CHOREO_BACKOFF_MAX_S": "0.2",
    "CHOREO_ACK_WAIT_S": "4",
    "CHOREO_HANDLER_TIMEOUT_S": "2",
    "CHOREO_CALL_TIMEOUT_S": "0.5",
}


@dataclass
class Saga:
    broker: EmbeddedBroker
    tmp_path: Path
    env: dict[str, str]
    runtimes: dict[str, ServiceRuntime] = field(default_factory=dict)

    def settings(self) -> tuple[dict[str, str], SagaSettings]:
        env = {"CHOREO_DATA_DIR": str(self.tmp_path), **self.env}
        return env, SagaSettings.from_env(env)

    async def start(self, *names: str) -> None:
        env, saga = self.settings()
        for name in names or registry.SERVICE_NAMES:
            runtime_settings = RuntimeSettings.from_env(
                {
                    **env,
                    "CHOREO_NATS_URL": self.broker.url,
                    "CHOREO_DATABASE_URL": f"sqlite:///{self.tmp_path}/{name}.db",
                },
                service=name,
            )
            runtime = ServiceRuntime(registry.build(name, runtime_settings, saga), runtime_settings)
            await runtime.start()
            self.runtimes[name] = runtime

    async def stop(self, name: str) -> None:
        await self.runtimes.pop(name).stop(grace_s=1.0)

    async def place(self, path: SagaPath = SagaPath.HAPPY, country: str = "US") -> str:
        request = request_for(path, random.randrange(10**6), random.Random(7))
        request.shipping_address.country_code = country
        async with channel(self.runtimes["order"].grpc_port) as ch:
            reply = await order_grpc.OrderServiceStub(ch).PlaceOrder(request)
        order_id: str = reply.order.order_id
        return order_id

    async def order(self, order_id: str) -> Order:
        async with self.runtimes["order"].db.read() as tx:
            order = await order_store.load_order(tx, order_id)
        assert order is not None
        return order

    async def stock(self) -> list[StockLevel]:
        async with self.runtimes["inventory"].db.read() as tx:
            return await inventory_store.all_stock(tx)

    def gateway(self) -> FakePaymentGateway:
        found: FakePaymentGateway = self.runtimes["payment"].definition.resources["gateway"]
        return found

    def provider(self) -> FakeShippingProvider:
        found: FakeShippingProvider = self.runtimes["shipping"].definition.resources["provider"]
        return found

    async def payments(self) -> LedgerCounts:
        return await self.gateway().ledger_counts()

    async def shipments(self) -> ShippingLedgerCounts:
        return await self.provider().ledger_counts()


def all_released(levels: list[StockLevel]) -> bool:
    """Nothing reserved, nothing shipped: every unit is available again."""
    return all(lv.available == lv.initial and lv.reserved == 0 for lv in levels)


Call = Callable[..., Awaitable[Any]]


def failing(
    fake: object, method: str, times: int, fail: Callable[[], Exception], *, after: bool
) -> None:
    """Make ``fake.method`` fail its next ``times`` calls: before doing anything, or after (the
    work is done, the answer lost), as a provider in an outage does."""
    call: Call = getattr(fake, method)
    left = [times]

    async def scripted(*args: Any, **kwargs: Any) -> Any:
        if left[0] <= 0:
            return await call(*args, **kwargs)
        left[0] -= 1
        if after:
            await call(*args, **kwargs)
        raise fail()

    setattr(fake, method, scripted)


def hanging(fake: object, method: str, release: asyncio.Event, times: int = 1_000_000) -> None:
    """Make ``fake.method`` not answer (its next ``times`` calls) until ``release`` is set."""
    call: Call = getattr(fake, method)
    left = [times]

    async def scripted(*args: Any, **kwargs: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            await release.wait()
        return await call(*args, **kwargs)

    setattr(fake, method, scripted)


@pytest.fixture
async def saga(broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[Saga]:
    harness = Saga(broker, tmp_path, dict(FAST))
    yield harness
    for name in list(harness.runtimes):
        await harness.stop(name)


FINAL = (order_pb.ORDER_STATUS_SHIPPED, order_pb.ORDER_STATUS_CANCELLED)
