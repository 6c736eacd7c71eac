"""Inventory as the flow table has it: reserve all or nothing, release on failure, ship."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from choreo.broker import EmbeddedBroker
from choreo.service import ServiceRuntime
from choreo.testing import publish_event
from services.inventory.service import build
from services.settings import SagaSettings
from shop.common.v1 import address_pb2, money_pb2, order_line_pb2
from shop.inventory.v1 import events_pb2 as inv
from shop.inventory.v1 import inventory_service_pb2 as pb
from shop.inventory.v1 import inventory_service_pb2_grpc as pb_grpc
from shop.order.v1 import events_pb2 as order_events
from shop.payment.v1 import events_pb2 as payment_events
from shop.shipping.v1 import events_pb2 as shipping_events
from tests.services import (
    channel,
    count,
    emitted,
    runtime_settings,
    wait_for_count,
    wait_processed,
)

CATALOG = {
    "currency": "USD",
    "products": [
        {"sku": "SKU-A", "name": "A", "unit_price_minor": 100, "initial_stock": 5},
        {"sku": "SKU-B", "name": "B", "unit_price_minor": 250, "initial_stock": 10},
    ],
    "customers": [{"customer_id": "cust-1", "credit_limit_minor": 100000}],
}


@pytest.fixture
async def inventory(broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[ServiceRuntime]:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(CATALOG))
    saga = SagaSettings(data_dir=tmp_path, catalog_path=catalog)
    settings = runtime_settings("inventory", broker, tmp_path)
    runtime = ServiceRuntime(build(settings, saga), settings)
    await runtime.start()
    yield runtime
    await runtime.stop()


@pytest.fixture
async def stub(inventory: ServiceRuntime) -> AsyncIterator[pb_grpc.InventoryServiceAsyncStub]:
    async with channel(inventory.grpc_port) as ch:
        yield pb_grpc.InventoryServiceStub(ch)


def order(*lines: tuple[str, int]) -> order_events.OrderCreated:
    return order_events.OrderCreated(
        order_id=f"ord-{uuid.uuid4().hex[:8]}",
        customer_id="cust-1",
        lines=[
            order_line_pb2.OrderLine(
                sku=sku,
                quantity=qty,
                unit_price=money_pb2.Money(amount_minor=100, currency_code="USD"),
            )
            for sku, qty in lines
        ],
        total=money_pb2.Money(amount_minor=100 * sum(q for _, q in lines), currency_code="USD"),
        shipping_address=address_pb2.Address(
            recipient_name="Ada",
            line1="1 Main St",
            city="Springfield",
            postal_code="12345",
            country_code="US",
        ),
        payment_token="tok_visa",
    )


async def place(js: Any, event: order_events.OrderCreated) -> None:
    await publish_event(js, event, aggregate_id=event.order_id)


async def levels(stub: pb_grpc.InventoryServiceAsyncStub, sku: str) -> tuple[int, int, int]:
    level = (await stub.GetStock(pb.GetStockRequest(sku=sku))).stock_level
    return level.available, level.reserved, level.shipped


async def test_given_stock_of_5_when_6_are_wanted_then_reservation_fails_with_a_shortage(
    inventory: ServiceRuntime, js: Any, stub: pb_grpc.InventoryServiceAsyncStub
) -> None:
    event = order(("SKU-B", 1), ("SKU-A", 6))
    await place(js, event)
    await wait_for_count(js, inv.InventoryReservationFailed, 1)

    (failed,) = await emitted(js, inv.InventoryReservationFailed)
    assert failed.order_id == event.order_id
    assert failed.customer_id == "cust-1"
    assert failed.reason == inv.RESERVATION_FAILURE_REASON_INSUFFICIENT_STOCK
    assert [(s.sku, s.requested, s.available) for s in failed.shortages] == [("SKU-A", 6, 5)]
    # All or none: the line that would have fit was not reserved either.
    assert await levels(stub, "SKU-B") == (10, 0, 0)
    assert await count(js, inv.InventoryReserved) == 0


async def test_an_unknown_sku_fails_the_reservation(inventory: ServiceRuntime, js: Any) -> None:
    await place(js, order(("SKU-NOPE", 1)))
    await wait_for_count(js, inv.InventoryReservationFailed, 1)
    (failed,) = await emitted(js, inv.InventoryReservationFailed)
    assert failed.reason == inv.RESERVATION_FAILURE_REASON_UNKNOWN_SKU


async def test_given_stock_when_every_line_fits_then_reserved_carrying_the_rest_forward(
    inventory: ServiceRuntime, js: Any, stub: pb_grpc.InventoryServiceAsyncStub
) -> None:
    event = order(("SKU-A", 2), ("SKU-B", 3))
    await place(js, event)
    await wait_for_count(js, inv.InventoryReserved, 1)

    (reserved,) = await emitted(js, inv.InventoryReserved)
    assert reserved.order_id == event.order_id
    assert reserved.customer_id == event.customer_id
    assert reserved.total == event.total
    assert reserved.payment_token == event.payment_token
    assert reserved.shipping_address == event.shipping_address
    assert list(reserved.lines) == list(event.lines)  # prices included
    assert await levels(stub, "SKU-A") == (3, 2, 0)

    got = (await stub.GetReservation(pb.GetReservationRequest(order_id=event.order_id))).reservation
    assert got.reservation_id == reserved.reservation_id
    assert got.status == pb.RESERVATION_STATUS_RESERVED
    assert [(line.sku, line.quantity) for line in got.lines] == [("SKU-A", 2), ("SKU-B", 3)]


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (payment_events.PaymentFailed, inv.RELEASE_REASON_PAYMENT_FAILED),
        (shipping_events.ShippingFailed, inv.RELEASE_REASON_SHIPPING_FAILED),
    ],
)
async def test_a_later_failure_releases_the_reservation_once(
    inventory: ServiceRuntime,
    js: Any,
    stub: pb_grpc.InventoryServiceAsyncStub,
    failure: Any,
    reason: int,
) -> None:
    event = order(("SKU-A", 4))
    await place(js, event)
    await wait_for_count(js, inv.InventoryReserved, 1)

    # Delivered twice under different event ids, as a replay would: released once.
    for _ in range(2):
        await publish_event(js, failure(order_id=event.order_id), aggregate_id=event.order_id)
    await wait_for_count(js, inv.InventoryReleased, 1)
    await wait_processed(inventory, failure, 2)
    await asyncio.sleep(0.5)

    (released,) = await emitted(js, inv.InventoryReleased)
    assert released.reason == reason
    assert [(line.sku, line.quantity) for line in released.lines] == [("SKU-A", 4)]
    assert await levels(stub, "SKU-A") == (5, 0, 0)
    status = await stub.GetReservation(pb.GetReservationRequest(order_id=event.order_id))
    assert status.reservation.status == pb.RESERVATION_STATUS_RELEASED


async def test_stock_is_conserved_through_reserve_release_and_ship(
    inventory: ServiceRuntime, js: Any, stub: pb_grpc.InventoryServiceAsyncStub
) -> None:
    shipped, released, failed = order(("SKU-B", 3)), order(("SKU-B", 2)), order(("SKU-B", 99))
    for event in (shipped, released, failed):
        await place(js, event)
    await wait_for_count(js, inv.InventoryReserved, 2)
    await wait_for_count(js, inv.InventoryReservationFailed, 1)
    assert await levels(stub, "SKU-B") == (5, 5, 0)

    await publish_event(
        js,
        shipping_events.ShipmentCreated(order_id=shipped.order_id, shipment_id="shp-1"),
        aggregate_id=shipped.order_id,
    )
    await publish_event(
        js, payment_events.PaymentFailed(order_id=released.order_id), aggregate_id=released.order_id
    )
    await wait_for_count(js, inv.InventoryShipped, 1)
    await wait_for_count(js, inv.InventoryReleased, 1)
    (ship,) = await emitted(js, inv.InventoryShipped)
    assert (ship.order_id, ship.shipment_id) == (shipped.order_id, "shp-1")

    # Releasing what already shipped, or shipping what was released, moves nothing.
    await publish_event(
        js, shipping_events.ShippingFailed(order_id=shipped.order_id), aggregate_id=shipped.order_id
    )
    await publish_event(
        js,
        shipping_events.ShipmentCreated(order_id=released.order_id, shipment_id="shp-2"),
        aggregate_id=released.order_id,
    )
    await wait_processed(inventory, shipping_events.ShippingFailed, 1)
    await wait_processed(inventory, shipping_events.ShipmentCreated, 2)
    await asyncio.sleep(0.5)
    assert await count(js, inv.InventoryShipped) == 1
    assert await count(js, inv.InventoryReleased) == 1

    available, reserved, shipped_qty = await levels(stub, "SKU-B")
    assert (available, reserved, shipped_qty) == (7, 0, 3)
    assert available + reserved + shipped_qty == 10


async def test_get_stock_names_the_field_and_knows_unknown_skus(
    stub: pb_grpc.InventoryServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await stub.GetStock(pb.GetStockRequest(sku=""))
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sku" in (invalid.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetStock(pb.GetStockRequest(sku="SKU-NOPE"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.aio.AioRpcError) as no_reservation:
        await stub.GetReservation(pb.GetReservationRequest(order_id="ord-unknown"))
    assert no_reservation.value.code() == grpc.StatusCode.NOT_FOUND
