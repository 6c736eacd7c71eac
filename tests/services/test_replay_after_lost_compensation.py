"""Replaying a dead letter never ships goods for free (issue 23, finding 1).

A step gives up and undoes its call at the provider (payment voids the charge, shipping cancels
the booking); the provider takes the undo but its answer is lost, so the give-up cannot finish
and files an ALARM letter. When the operator replays that letter, the handler finds the charge
or booking again by its idempotency key. The provider answers with its *current* status
(voided, cancelled), so the step fails (``PaymentFailed`` / ``ShippingFailed``) and the usual
compensations run; it never announces a payment or a shipment the provider has given back.

The five services in-process on a real nats-server, the fake providers' own ledgers as the
referee, and the invariant auditor (``choreo audit``'s checks) on the quiet system.
"""

from __future__ import annotations

from typing import Any

import pytest

from choreo import dlq
from choreo.testing import wait_for
from services import audit
from services.catalog import load_catalog
from services.order.domain import CancellationReason, OrderStatus
from services.payment.gateway import GatewayUnavailable
from services.shipping.provider import ProviderUnavailable
from shop.notification.v1 import events_pb2 as notification_events
from shop.payment.v1 import events_pb2 as pay
from shop.shipping.v1 import events_pb2 as ship
from tests.services import emitted
from tests.services.saga_harness import Saga, all_released, failing, saga

__all__ = ["saga"]  # the fixture


async def alarm_letter(js: Any, service: str, event_type: str) -> dlq.DeadLetter:
    """The open ALARM letter of ``service`` on ``event_type``, once it is filed."""

    async def open_alarms() -> list[dlq.DeadLetter]:
        try:
            letters = await dlq.list_dead_letters(js)
        except Exception:
            return []
        return [
            letter
            for letter in letters
            if letter.alarm
            and letter.service == service
            and letter.event_type.endswith(f".{event_type}")
        ]

    async def filed() -> bool:
        return bool(await open_alarms())

    await wait_for(filed, timeout=30, what=f"an ALARM letter of {service} on {event_type}")
    (letter,) = await open_alarms()
    return letter


async def ended_cancelled(s: Saga, order_id: str) -> None:
    async def reached() -> bool:
        order = await s.order(order_id)
        return order.status is OrderStatus.CANCELLED and order.customer_notified

    await wait_for(reached, timeout=20, what=f"order {order_id} cancelled and notified")


async def quiet(s: Saga, js: Any) -> None:
    ok = await audit.wait_for_quiescence(js, s.tmp_path, timeout_s=20)
    assert ok, "the system never became quiet"


async def audited(s: Saga, js: Any) -> audit.AuditReport:
    """The auditor's report on the quiet system, with the providers' own ledgers."""
    _, settings = s.settings()
    ledgers = await audit.read_ledgers(s.tmp_path, settings)
    addresses = {name: f"127.0.0.1:{rt.grpc_port}" for name, rt in s.runtimes.items()}
    return await audit.audit(
        js=js, addresses=addresses, catalog=load_catalog(settings.catalog_path), ledgers=ledgers
    )


async def test_replaying_a_charge_whose_void_answer_was_lost_fails_the_payment(
    saga: Saga, js: Any
) -> None:
    await saga.start()
    gateway = saga.gateway()
    # Every charge attempt is taken (one key: one charge) and its answer lost: the step gives
    # up. Its void is taken too, and that answer lost every time: the give-up cannot finish.
    failing(gateway, "charge", 3, lambda: GatewayUnavailable("timed out"), after=True)
    failing(gateway, "void", 10_000, lambda: GatewayUnavailable("timed out"), after=True)
    order_id = await saga.place()

    letter = await alarm_letter(js, "payment", "InventoryReserved")
    ledger = await saga.payments()
    assert (ledger.charges, ledger.refunds) == ({order_id: 1}, {order_id: 1})

    # The gateway is back; the operator replays the letter, as the console says to.
    del gateway.void  # the instance's scripted failure; the gateway's own method again
    await dlq.replay_letter(js, letter.seq, note="gateway is back")

    await ended_cancelled(saga, order_id)
    assert (await saga.order(order_id)).cancellation_reason is CancellationReason.PAYMENT_FAILED
    await quiet(saga, js)
    assert await emitted(js, pay.PaymentCompleted) == []
    (failed,) = await emitted(js, pay.PaymentFailed)
    assert failed.reason == pay.PAYMENT_FAILURE_REASON_GATEWAY_UNAVAILABLE
    ledger = await saga.payments()
    assert (ledger.charges, ledger.refunds) == ({order_id: 1}, {order_id: 1})
    assert (await saga.shipments()).bookings == {}
    assert all_released(await saga.stock())
    (told,) = await emitted(js, notification_events.NotificationSent)
    assert told.kind == notification_events.NOTIFICATION_KIND_ORDER_CANCELLED

    report = await audited(saga, js)
    assert report.violations == []


async def test_replaying_a_booking_whose_cancel_answer_was_lost_fails_the_shipment(
    saga: Saga, js: Any
) -> None:
    await saga.start()
    provider = saga.provider()
    # Booked once (one key), every answer lost: the step gives up; the carrier takes the
    # cancel of that booking, and that answer is lost every time: the give-up cannot finish.
    failing(provider, "book", 3, lambda: ProviderUnavailable("timed out"), after=True)
    failing(provider, "cancel", 10_000, lambda: ProviderUnavailable("timed out"), after=True)
    order_id = await saga.place()

    letter = await alarm_letter(js, "shipping", "PaymentCompleted")
    shipments = await saga.shipments()
    assert (shipments.bookings, shipments.cancelled) == ({order_id: 1}, {order_id: 1})

    del provider.cancel
    await dlq.replay_letter(js, letter.seq, note="carrier is back")

    await ended_cancelled(saga, order_id)
    assert (await saga.order(order_id)).cancellation_reason is CancellationReason.SHIPPING_FAILED
    await quiet(saga, js)
    assert await emitted(js, ship.ShipmentCreated) == []
    (failed,) = await emitted(js, ship.ShippingFailed)
    assert failed.reason == ship.SHIPPING_FAILURE_REASON_PROVIDER_UNAVAILABLE
    # The compensations of ShippingFailed: refunded exactly once, stock back on the shelf.
    ledger = await saga.payments()
    assert (ledger.charges, ledger.refunds) == ({order_id: 1}, {order_id: 1})
    shipments = await saga.shipments()
    assert (shipments.bookings, shipments.cancelled) == ({order_id: 1}, {order_id: 1})
    assert all_released(await saga.stock())
    (told,) = await emitted(js, notification_events.NotificationSent)
    assert told.kind == notification_events.NOTIFICATION_KIND_ORDER_CANCELLED

    report = await audited(saga, js)
    assert report.violations == []


@pytest.mark.parametrize("first", ["InventoryReserved", "OrderCancelled"])
async def test_replaying_both_letters_after_the_deadline_in_either_order(
    saga: Saga, js: Any, first: str
) -> None:
    """The void's answers stay lost past the saga deadline: payment's give-up files an ALARM,
    and so does its compensation of the deadline's OrderCancelled. Once the gateway is back,
    the operator replays both letters, in either order: the order stays cancelled, the charge
    is given back once, nothing ships."""
    saga.env.update(CHOREO_SAGA_DEADLINE_S="2", CHOREO_DEADLINE_SCAN_INTERVAL_S="0.2")
    await saga.start()
    gateway = saga.gateway()
    failing(gateway, "charge", 3, lambda: GatewayUnavailable("timed out"), after=True)
    failing(gateway, "void", 10_000, lambda: GatewayUnavailable("timed out"), after=True)
    order_id = await saga.place()
    letters = {
        event: await alarm_letter(js, "payment", event)
        for event in ("OrderCancelled", "InventoryReserved")
    }
    assert (await saga.order(order_id)).cancellation_reason is CancellationReason.DEADLINE_EXCEEDED
    del gateway.void

    second = "OrderCancelled" if first == "InventoryReserved" else "InventoryReserved"
    for event in (first, second):
        await dlq.replay_letter(js, letters[event].seq, note="gateway is back")
        await quiet(saga, js)

    assert (await saga.order(order_id)).status is OrderStatus.CANCELLED
    assert await emitted(js, pay.PaymentCompleted) == []
    assert await emitted(js, ship.ShipmentCreated) == []
    ledger = await saga.payments()
    assert (ledger.charges, ledger.refunds) == ({order_id: 1}, {order_id: 1})
    assert all_released(await saga.stock())
    (told,) = await emitted(js, notification_events.NotificationSent)
    assert told.kind == notification_events.NOTIFICATION_KIND_ORDER_CANCELLED
    report = await audited(saga, js)
    assert report.violations == []
