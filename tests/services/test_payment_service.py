"""Payment as the flow table has it: charge a reserved order, refund it once when shipping fails."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from choreo import sealing
from choreo.broker import EmbeddedBroker
from choreo.service import ServiceRuntime
from choreo.testing import publish_event
from services import payment_token
from services.payment.gateway import FakePaymentGateway
from services.payment.service import build
from services.settings import SagaSettings
from shop.common.v1 import address_pb2, money_pb2, order_line_pb2
from shop.inventory.v1 import events_pb2 as inv
from shop.payment.v1 import events_pb2 as pay
from shop.payment.v1 import payment_service_pb2 as pb
from shop.payment.v1 import payment_service_pb2_grpc as pb_grpc
from shop.shipping.v1 import events_pb2 as shipping_events
from tests.services import (
    channel,
    count,
    emitted,
    runtime_settings,
    wait_for_count,
    wait_processed,
    wait_published,
)

Start = Callable[..., Any]

# The payment service's key in these tests: events are sealed with its public half, as the
# order service seals them.
TOKEN_KEY = sealing.generate()


@pytest.fixture
async def start_payment(
    broker: EmbeddedBroker, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """Start the payment service with the given SagaSettings overrides (default catalog)."""
    started: list[ServiceRuntime] = []

    key_file = tmp_path / "payment-token-key.pem"
    sealing.write_keypair(key_file, tmp_path / "payment-token-public.pem", TOKEN_KEY)

    async def start(**saga: Any) -> ServiceRuntime:
        settings = runtime_settings("payment", broker, tmp_path)
        saga.setdefault("payment_token_private_key_file", key_file)
        runtime = ServiceRuntime(build(settings, SagaSettings(data_dir=tmp_path, **saga)), settings)
        await runtime.start()
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        await runtime.stop()


@pytest.fixture
async def payment(start_payment: Start) -> ServiceRuntime:
    runtime: ServiceRuntime = await start_payment()
    return runtime


def gateway(runtime: ServiceRuntime) -> FakePaymentGateway:
    found: FakePaymentGateway = runtime.definition.resources["gateway"]
    return found


def reserved(
    customer_id: str = "cust-alice",
    total: int = 2500,
    token: str = "tok_visa",
    order_id: str | None = None,
) -> inv.InventoryReserved:
    order_id = order_id or f"ord-{uuid.uuid4().hex[:8]}"
    return inv.InventoryReserved(
        order_id=order_id,
        reservation_id="res-1",
        customer_id=customer_id,
        total=money_pb2.Money(amount_minor=total, currency_code="USD"),
        payment_token=payment_token.seal(TOKEN_KEY.sealing_key, order_id, token),
        lines=[
            order_line_pb2.OrderLine(
                sku="SKU-MUG",
                quantity=2,
                unit_price=money_pb2.Money(amount_minor=total // 2, currency_code="USD"),
            )
        ],
        shipping_address=address_pb2.Address(
            recipient_name="Ada", line1="1 Main St", city="Springfield", country_code="US"
        ),
    )


async def deliver(js: Any, event: Any) -> None:
    await publish_event(js, event, aggregate_id=event.order_id)


async def test_given_reserved_stock_the_total_is_charged_and_carried_forward(
    payment: ServiceRuntime, js: Any
) -> None:
    event = reserved()
    await deliver(js, event)
    await wait_for_count(js, pay.PaymentCompleted, 1)

    (completed,) = await emitted(js, pay.PaymentCompleted)
    assert completed.order_id == event.order_id
    assert completed.customer_id == "cust-alice"
    assert completed.amount == event.total
    assert completed.shipping_address == event.shipping_address
    assert list(completed.lines) == list(event.lines)
    assert completed.gateway_reference.startswith("ch_")
    counts = await gateway(payment).ledger_counts()
    assert counts.charges == {event.order_id: 1}

    async with channel(payment.grpc_port) as ch:
        got = await pb_grpc.PaymentServiceStub(ch).GetPayment(
            pb.GetPaymentRequest(order_id=event.order_id)
        )
    assert got.payment.status == pb.PAYMENT_STATUS_COMPLETED
    assert got.payment.payment_id == completed.payment_id
    assert got.payment.amount.amount_minor == 2500


async def test_given_a_declined_token_then_payment_failed(payment: ServiceRuntime, js: Any) -> None:
    event = reserved(token="tok_declined_card")
    await deliver(js, event)
    await wait_for_count(js, pay.PaymentFailed, 1)

    (failed,) = await emitted(js, pay.PaymentFailed)
    assert failed.reason == pay.PAYMENT_FAILURE_REASON_PAYMENT_DECLINED
    assert failed.customer_id == "cust-alice"
    assert failed.amount.amount_minor == 2500
    assert "declined" in failed.detail
    assert await count(js, pay.PaymentCompleted) == 0


async def test_given_a_total_over_the_credit_limit_then_payment_failed(
    payment: ServiceRuntime, js: Any
) -> None:
    await deliver(js, reserved(customer_id="cust-low-limit", total=2002))
    await wait_for_count(js, pay.PaymentFailed, 1)
    (failed,) = await emitted(js, pay.PaymentFailed)
    assert failed.reason == pay.PAYMENT_FAILURE_REASON_CREDIT_LIMIT_EXCEEDED
    assert (await gateway(payment).ledger_counts()).charges == {}


async def test_given_a_gateway_failing_transiently_the_charge_is_retried_and_charged_once(
    start_payment: Start, js: Any
) -> None:
    # Seed 9 at a 60% failure rate: unavailable, then two lost responses (charged, answer
    # lost), then an answer; the retries must find the first charge, not make new ones.
    runtime: ServiceRuntime = await start_payment(payment_failure_rate=0.6, seed=9)
    event = reserved()
    await deliver(js, event)
    await wait_for_count(js, pay.PaymentCompleted, 1)

    counts = await gateway(runtime).ledger_counts()
    assert counts.charges == {event.order_id: 1}
    (consumer,) = [c for c in runtime.consumers if "InventoryReserved" in c.name]
    assert consumer.stats.outcomes.get("retry") == 3


async def test_shipping_failed_twice_refunds_exactly_once(payment: ServiceRuntime, js: Any) -> None:
    event = reserved()
    await deliver(js, event)
    await wait_for_count(js, pay.PaymentCompleted, 1)

    for _ in range(2):
        await deliver(js, shipping_events.ShippingFailed(order_id=event.order_id, detail="AQ"))
    await wait_for_count(js, pay.PaymentRefunded, 1)
    await wait_processed(payment, shipping_events.ShippingFailed, 2)
    await wait_published(payment)

    assert await count(js, pay.PaymentRefunded) == 1
    (refund,) = await emitted(js, pay.PaymentRefunded)
    assert refund.amount.amount_minor == 2500
    counts = await gateway(payment).ledger_counts()
    assert counts.refunds == {event.order_id: 1}
    async with channel(payment.grpc_port) as ch:
        got = await pb_grpc.PaymentServiceStub(ch).GetPayment(
            pb.GetPaymentRequest(order_id=event.order_id)
        )
    assert got.payment.status == pb.PAYMENT_STATUS_REFUNDED
    assert got.payment.refund_id == refund.refund_id


async def test_shipping_failed_without_a_charge_refunds_nothing(
    payment: ServiceRuntime, js: Any
) -> None:
    await deliver(js, shipping_events.ShippingFailed(order_id="ord-never-charged"))
    await wait_processed(payment, shipping_events.ShippingFailed, 1)
    await wait_published(payment)
    assert await count(js, pay.PaymentRefunded) == 0


async def test_get_payment_validates_and_knows_unknown_ids(payment: ServiceRuntime) -> None:
    async with channel(payment.grpc_port) as ch:
        stub = pb_grpc.PaymentServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.GetPayment(pb.GetPaymentRequest(order_id=""))
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "order_id" in (invalid.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetPayment(pb.GetPaymentRequest(order_id="ord-unknown"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
