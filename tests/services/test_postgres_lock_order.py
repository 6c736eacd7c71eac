"""Inventory on Postgres never deadlocks: stock rows are locked in one global order.

Two orders for the same SKUs listed in opposite order used to lock the rows in line order,
so each held one row and waited for the other's; Postgres then aborted one of them with
``DeadlockDetectedError`` and the consumer retried it. Here the inventory service runs on a
fresh database of the local Postgres against a real nats-server, and a few hundred such orders
must all be reserved with not a single retry.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from choreo.broker import EmbeddedBroker
from choreo.service import ServiceRuntime
from choreo.settings import RuntimeSettings
from choreo.testing import publish_event, wait_for
from services.inventory.service import build
from services.settings import SagaSettings
from shop.common.v1 import address_pb2, money_pb2, order_line_pb2
from shop.inventory.v1 import events_pb2 as inv
from shop.order.v1 import events_pb2 as order_events
from tests.postgres import fresh_database
from tests.services import count

ORDERS = 300
INITIAL = 1_000_000
CATALOG = {
    "currency": "USD",
    "products": [
        {"sku": "SKU-A", "name": "A", "unit_price_minor": 100, "initial_stock": INITIAL},
        {"sku": "SKU-B", "name": "B", "unit_price_minor": 100, "initial_stock": INITIAL},
    ],
    "customers": [{"customer_id": "cust-1", "credit_limit_minor": 10**9}],
}


def two_line_order(index: int) -> order_events.OrderCreated:
    # Even orders list A then B, odd ones B then A: the opposite lock orders of a deadlock.
    skus = ["SKU-A", "SKU-B"] if index % 2 == 0 else ["SKU-B", "SKU-A"]
    return order_events.OrderCreated(
        order_id=f"ord-{index}-{uuid.uuid4().hex[:6]}",
        customer_id="cust-1",
        lines=[
            order_line_pb2.OrderLine(
                sku=sku,
                quantity=1,
                unit_price=money_pb2.Money(amount_minor=100, currency_code="USD"),
            )
            for sku in skus
        ],
        total=money_pb2.Money(amount_minor=200, currency_code="USD"),
        shipping_address=address_pb2.Address(
            recipient_name="Ada",
            line1="1 Main St",
            city="Springfield",
            postal_code="12345",
            country_code="US",
        ),
        payment_token="tok_visa",
    )


async def test_opposite_line_orders_reserve_without_a_deadlock_on_postgres(
    broker: EmbeddedBroker, js: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(CATALOG))
    caplog.set_level(logging.INFO, logger="choreo")
    async with fresh_database() as url:
        settings = RuntimeSettings(
            service="inventory",
            nats_url=broker.url,
            database_url=url,
            fetch_timeout_s=0.2,
            relay_sweep_interval_s=0.2,
            backoff_base_s=0.05,
        )
        runtime = ServiceRuntime(
            build(settings, SagaSettings(data_dir=tmp_path, catalog_path=catalog)), settings
        )
        await runtime.start()
        try:
            started = time.monotonic()
            for index in range(ORDERS):
                event = two_line_order(index)
                await publish_event(js, event, aggregate_id=event.order_id)

            async def all_reserved() -> bool:
                return await count(js, inv.InventoryReserved) >= ORDERS

            await wait_for(all_reserved, timeout=60, what=f"{ORDERS} reservations")
            elapsed = time.monotonic() - started
            outcomes: dict[str, int] = {}
            for consumer in runtime.consumers:
                for outcome, n in consumer.stats.outcomes.items():
                    outcomes[outcome] = outcomes.get(outcome, 0) + n
            deadlocks = [r for r in caplog.records if "Deadlock" in r.getMessage()]
            print(f"{ORDERS} two-line orders in {elapsed:.1f}s: {outcomes}")
            assert outcomes.get("retry", 0) == 0, f"retries: {outcomes}"
            assert deadlocks == []
            assert outcomes.get("handled") == ORDERS
            async with runtime.db.read() as tx:
                rows = await tx.fetchall("SELECT sku, available, reserved FROM stock ORDER BY sku")
            assert rows == [
                ("SKU-A", INITIAL - ORDERS, ORDERS),
                ("SKU-B", INITIAL - ORDERS, ORDERS),
            ]
        finally:
            await runtime.stop()
