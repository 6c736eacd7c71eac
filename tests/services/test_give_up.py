"""Every step that gives up compensates (or raises an alarm), and a hung provider cannot stall a
saga: the five services in-process on a real nats-server, with the fake providers failing."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from choreo import dlq, subjects
from choreo.testing import wait_for
from services.order.domain import CancellationReason, OrderStatus
from services.payment.gateway import GatewayUnavailable, IdempotencyKeyReused
from services.shipping.provider import ProviderUnavailable
from services.workload import SagaPath
from shop.payment.v1 import events_pb2 as pay
from shop.shipping.v1 import events_pb2 as ship
from tests.services import emitted
from tests.services.saga_harness import Saga, all_released, failing, hanging, saga

__all__ = ["saga"]  # the fixture


async def filed(js: Any) -> list[dlq.DeadLetter]:
    """The dead letters once there is one: a step that gave up and compensated files its letter
    after its commit, alongside (not before) the failure event that ends the saga."""

    async def any_letter() -> bool:
        return bool(await letters(js))

    await wait_for(any_letter, what="the give-up's dead letter")
    return await letters(js)


async def ended(s: Saga, order_id: str, status: OrderStatus, timeout: float = 15.0) -> None:
    async def reached() -> bool:
        order = await s.order(order_id)
        return order.status is status and order.customer_notified

    await wait_for(reached, timeout=timeout, what=f"order {order_id} {status} and notified")


async def letters(js: Any) -> list[dlq.DeadLetter]:
    try:
        return await dlq.list_dead_letters(js)
    except Exception:
        return []


async def test_gateway_down_longer_than_the_retry_budget_cancels_and_gives_the_charge_back(
    saga: Saga, js: Any
) -> None:
    await saga.start()
    gateway = saga.gateway()
    # Every charge attempt of the budget (3) is taken by the gateway, and its answer lost.
    failing(gateway, "charge", 3, lambda: GatewayUnavailable("timed out"), after=True)
    order_id = await saga.place()

    await ended(saga, order_id, OrderStatus.CANCELLED)
    order = await saga.order(order_id)
    assert order.cancellation_reason is CancellationReason.PAYMENT_FAILED
    (failed,) = await emitted(js, pay.PaymentFailed)
    assert failed.reason == pay.PAYMENT_FAILURE_REASON_GATEWAY_UNAVAILABLE
    # The gateway's own ledger: charged once (one key), given back exactly once.
    ledger = await saga.payments()
    assert ledger.charges == {order_id: 1}
    assert ledger.refunds == {order_id: 1}

    async def released() -> bool:
        return all_released(await saga.stock())

    await wait_for(released, what="the reserved stock to be released")
    # The give-up is on record for operators, marked as compensated (no alarm).
    (letter,) = await filed(js)
    assert letter.reason == dlq.RETRIES_EXHAUSTED
    assert letter.headers.get("choreo-dlq-compensated") == "true"
    assert letter.headers.get("choreo-dlq-alarm") is None


async def test_a_rejected_charge_step_still_fails_the_payment_and_compensations_run(
    saga: Saga, js: Any
) -> None:
    await saga.start()
    gateway = saga.gateway()
    # The handler turns this into a PermanentError: no retries, the step gives up at once.
    failing(gateway, "charge", 1, lambda: IdempotencyKeyReused("key used elsewhere"), after=False)
    order_id = await saga.place()

    await ended(saga, order_id, OrderStatus.CANCELLED)
    assert (await saga.order(order_id)).cancellation_reason is CancellationReason.PAYMENT_FAILED
    ledger = await saga.payments()
    assert ledger.charges.get(order_id, 0) == ledger.refunds.get(order_id, 0) == 0

    async def released() -> bool:
        return all_released(await saga.stock())

    await wait_for(released, what="the reserved stock to be released")
    (letter,) = await filed(js)
    assert letter.reason == dlq.REJECTED
    assert letter.deliveries == 1


async def test_an_exhausted_refund_has_no_failure_event_so_it_raises_an_alarm(
    saga: Saga, js: Any
) -> None:
    await saga.start()
    gateway = saga.gateway()
    failing(gateway, "refund", 100, lambda: GatewayUnavailable("down"), after=False)
    order_id = await saga.place(SagaPath.HAPPY, country="AQ")  # the carrier refuses: refund due

    await ended(saga, order_id, OrderStatus.CANCELLED)

    async def alarmed() -> bool:
        return any(letter.headers.get("choreo-dlq-alarm") == "true" for letter in await letters(js))

    await wait_for(alarmed, what="an alarm dead letter for the refund")
    (letter,) = await letters(js)
    assert letter.service == "payment"
    assert letter.reason == dlq.RETRIES_EXHAUSTED
    assert subjects.event_type_of_subject(letter.subject) == "shop.shipping.v1.ShippingFailed"
    listed = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "choreo.cli",
        "dlq",
        "list",
        "--nats-url",
        saga.broker.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(listed.communicate(), 60)
    assert listed.returncode == 0, err
    assert b"ALARM" in out and b"ShippingFailed" in out


async def test_a_hung_carrier_times_out_and_the_saga_still_ends(saga: Saga, js: Any) -> None:
    await saga.start()
    provider = saga.provider()
    never = asyncio.Event()
    hanging(provider, "book", never, times=3)
    try:
        order_id = await saga.place()

        await ended(saga, order_id, OrderStatus.CANCELLED, timeout=20)
        assert (
            await saga.order(order_id)
        ).cancellation_reason is CancellationReason.SHIPPING_FAILED
        (failed,) = await emitted(js, ship.ShippingFailed)
        assert failed.reason == ship.SHIPPING_FAILURE_REASON_PROVIDER_UNAVAILABLE

        async def compensated() -> bool:
            ledger = await saga.payments()
            return ledger.refunds == {order_id: 1} and all_released(await saga.stock())

        await wait_for(compensated, what="the refund and the release")
        assert (await saga.payments()).charges == {order_id: 1}
        assert (await saga.shipments()).bookings == {}
        assert await emitted(js, ship.ShipmentCreated) == []
    finally:
        never.set()


async def test_a_carrier_that_loses_the_booking_answer_gets_the_booking_cancelled(
    saga: Saga, js: Any
) -> None:
    await saga.start()
    provider = saga.provider()
    failing(provider, "book", 3, lambda: ProviderUnavailable("timed out"), after=True)
    order_id = await saga.place()

    await ended(saga, order_id, OrderStatus.CANCELLED)

    async def compensated() -> bool:
        ledger = await saga.payments()
        return ledger.refunds == {order_id: 1} and all_released(await saga.stock())

    await wait_for(compensated, what="the refund and the release")
    shipments = await saga.shipments()
    assert shipments.bookings == {order_id: 1}
    assert shipments.cancelled == {order_id: 1}
