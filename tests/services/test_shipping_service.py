"""Shipping as the flow table has it: a paid order is booked once, or fails for its destination."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from choreo.broker import EmbeddedBroker
from choreo.service import ServiceRuntime
from choreo.testing import publish_event
from services.settings import SagaSettings
from services.shipping.provider import FakeShippingProvider
from services.shipping.service import build
from shop.common.v1 import address_pb2, money_pb2
from shop.payment.v1 import events_pb2 as pay
from shop.shipping.v1 import events_pb2 as ship
from shop.shipping.v1 import shipping_service_pb2 as pb
from shop.shipping.v1 import shipping_service_pb2_grpc as pb_grpc
from tests.services import (
    channel,
    count,
    emitted,
    runtime_settings,
    wait_for_count,
    wait_processed,
)

Start = Callable[..., Any]


@pytest.fixture
async def start_shipping(broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[Start]:
    started: list[ServiceRuntime] = []

    async def start(**saga: Any) -> ServiceRuntime:
        settings = runtime_settings("shipping", broker, tmp_path)
        runtime = ServiceRuntime(build(settings, SagaSettings(data_dir=tmp_path, **saga)), settings)
        await runtime.start()
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        await runtime.stop()


@pytest.fixture
async def shipping(start_shipping: Start) -> ServiceRuntime:
    runtime: ServiceRuntime = await start_shipping()
    return runtime


def provider(runtime: ServiceRuntime) -> FakeShippingProvider:
    found: FakeShippingProvider = runtime.definition.resources["provider"]
    return found


def paid(country: str = "DE") -> pay.PaymentCompleted:
    return pay.PaymentCompleted(
        order_id=f"ord-{uuid.uuid4().hex[:8]}",
        payment_id="pay-1",
        customer_id="cust-alice",
        amount=money_pb2.Money(amount_minor=2500, currency_code="USD"),
        shipping_address=address_pb2.Address(
            recipient_name="Ada",
            line1="1 Hauptstr.",
            city="Berlin",
            postal_code="10115",
            country_code=country,
        ),
    )


async def deliver(js: Any, event: Any) -> None:
    await publish_event(js, event, aggregate_id=event.order_id)


async def test_given_a_payment_a_shipment_is_booked_once(shipping: ServiceRuntime, js: Any) -> None:
    event = paid()
    # Delivered twice under different event ids: one booking, one ShipmentCreated.
    await deliver(js, event)
    await deliver(js, event)
    await wait_for_count(js, ship.ShipmentCreated, 1)
    await wait_processed(shipping, pay.PaymentCompleted, 2)
    await asyncio.sleep(0.5)

    (created,) = await emitted(js, ship.ShipmentCreated)
    assert created.order_id == event.order_id
    assert created.customer_id == "cust-alice"
    assert created.carrier == "DHL"
    assert created.destination == event.shipping_address
    assert created.shipment_id and created.tracking_id
    assert (await provider(shipping).ledger_counts()).bookings == {event.order_id: 1}

    async with channel(shipping.grpc_port) as ch:
        got = await pb_grpc.ShippingServiceStub(ch).GetShipment(
            pb.GetShipmentRequest(order_id=event.order_id)
        )
    assert got.shipment.status == pb.SHIPMENT_STATUS_CREATED
    assert got.shipment.tracking_id == created.tracking_id
    assert got.shipment.destination.country_code == "DE"


async def test_given_an_unserviceable_country_then_shipping_failed(
    shipping: ServiceRuntime, js: Any
) -> None:
    event = paid(country="AQ")
    await deliver(js, event)
    await wait_for_count(js, ship.ShippingFailed, 1)

    (failed,) = await emitted(js, ship.ShippingFailed)
    assert failed.reason == ship.SHIPPING_FAILURE_REASON_UNSERVICEABLE_DESTINATION
    assert failed.payment_id == "pay-1"
    assert failed.customer_id == "cust-alice"
    assert "AQ" in failed.detail
    assert await count(js, ship.ShipmentCreated) == 0

    async with channel(shipping.grpc_port) as ch:
        got = await pb_grpc.ShippingServiceStub(ch).GetShipment(
            pb.GetShipmentRequest(order_id=event.order_id)
        )
    assert got.shipment.status == pb.SHIPMENT_STATUS_FAILED
    assert got.shipment.failure_reason == ship.SHIPPING_FAILURE_REASON_UNSERVICEABLE_DESTINATION


async def test_given_a_provider_failing_transiently_the_booking_is_retried_and_booked_once(
    start_shipping: Start, js: Any
) -> None:
    # Seed 9 at 60%: unavailable, two lost responses (booked, answer lost), then an answer.
    runtime: ServiceRuntime = await start_shipping(shipping_failure_rate=0.6, seed=9)
    event = paid()
    await deliver(js, event)
    await wait_for_count(js, ship.ShipmentCreated, 1)
    assert (await provider(runtime).ledger_counts()).bookings == {event.order_id: 1}
    (consumer,) = [c for c in runtime.consumers if c.name.endswith("PaymentCompleted")]
    assert consumer.stats.outcomes.get("retry") == 3


async def test_get_shipment_validates_and_knows_unknown_ids(shipping: ServiceRuntime) -> None:
    async with channel(shipping.grpc_port) as ch:
        stub = pb_grpc.ShippingServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.GetShipment(pb.GetShipmentRequest(order_id=""))
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "order_id" in (invalid.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetShipment(pb.GetShipmentRequest(order_id="ord-unknown"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
