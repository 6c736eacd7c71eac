"""Pure decisions behind give-up, the saga deadline and the runtime's bounds (no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from choreo.settings import RuntimeSettings
from services.catalog import Catalog
from services.inventory import domain as inventory
from services.notification import domain as notification
from services.order.domain import (
    CancellationReason,
    Order,
    OrderStatus,
    PlaceOrder,
    PlaceOrderLine,
    expire,
    new_order,
    overdue,
)
from services.payment import domain as payment
from services.shipping import domain as shipping
from services.values import Address, Money

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REQUEST = PlaceOrder(
    idempotency_key="key-1",
    customer_id="cust-alice",
    lines=(PlaceOrderLine("SKU-MUG", 2),),
    currency_code="USD",
    shipping_address=Address("Ada Lovelace", "1 Main St", "Springfield", "12345", "US"),
    payment_token="tok_visa",
)
DEADLINE_S = 300.0


@pytest.fixture
def placed(catalog: Catalog) -> Order:
    return new_order("o1", REQUEST, catalog, T0)


def test_an_order_not_final_at_its_deadline_is_cancelled_with_the_deadline_reason(
    placed: Order,
) -> None:
    late = T0 + timedelta(seconds=DEADLINE_S)
    for status in (OrderStatus.PENDING, OrderStatus.CONFIRMED):
        t = expire(replace(placed, status=status), late, DEADLINE_S)
        assert (t.changed, t.emit, t.order.status) == (True, True, OrderStatus.CANCELLED)
        assert t.order.cancellation_reason is CancellationReason.DEADLINE_EXCEEDED
        assert str(status) in t.order.cancellation_detail


def test_an_order_before_its_deadline_or_already_final_is_left_alone(placed: Order) -> None:
    early = T0 + timedelta(seconds=DEADLINE_S - 1)
    assert not overdue(placed, early, DEADLINE_S)
    assert not expire(placed, early, DEADLINE_S).changed
    late = T0 + timedelta(seconds=DEADLINE_S * 2)
    for status in (OrderStatus.SHIPPED, OrderStatus.CANCELLED):
        assert not expire(replace(placed, status=status), late, DEADLINE_S).changed


DEADLINE = "CANCELLATION_REASON_DEADLINE_EXCEEDED"
OTHER_REASONS = [
    "CANCELLATION_REASON_PAYMENT_FAILED",
    "CANCELLATION_REASON_SHIPPING_FAILED",
    "CANCELLATION_REASON_INVENTORY_UNAVAILABLE",
]


@pytest.mark.parametrize(
    "compensates",
    [
        payment.compensates_cancellation,
        inventory.compensates_cancellation,
        shipping.compensates_cancellation,
    ],
)
def test_only_a_deadline_cancellation_is_compensated_by_the_steps(compensates: object) -> None:
    assert callable(compensates)
    assert compensates(DEADLINE)
    assert not any(compensates(reason) for reason in OTHER_REASONS)


def completed(order_id: str = "o1") -> payment.Payment:
    return payment.Payment(
        order_id,
        payment.payment_id_for(order_id),
        "cust-alice",
        Money(2500, "USD"),
        payment.PaymentStatus.COMPLETED,
        charge_id="ch_1",
    )


def test_a_deadline_cancellation_voids_an_unanswered_charge_and_refunds_a_completed_one() -> None:
    assert payment.decide_cancellation("o1", None) == payment.VoidDue(payment.charge_key("o1"))
    due = payment.decide_cancellation("o1", completed())
    assert isinstance(due, payment.RefundDue) and due.idempotency_key == payment.refund_key("o1")
    failed = replace(completed(), status=payment.PaymentStatus.FAILED)
    assert isinstance(payment.decide_cancellation("o1", failed), payment.NoRefund)


def test_a_voided_charge_is_a_failed_payment_that_keeps_what_was_given_back() -> None:
    result = payment.VoidResult("ch_1", "re_1", Money(2500, "USD"))
    voided = payment.voided("o1", "cust-alice", Money(0, "USD"), result, payment.GAVE_UP)
    assert voided.status is payment.PaymentStatus.FAILED
    assert (voided.charge_id, voided.refund_id, voided.amount) == ("ch_1", "re_1", result.amount)
    # Nothing left to refund: a later ShippingFailed or deadline finds the answer recorded.
    assert isinstance(payment.decide_refund(voided), payment.NoRefund)


def test_an_order_cancelled_before_its_stock_was_reserved_blocks_a_late_reservation() -> None:
    outcome = inventory.cancel_before_reserving()
    assert isinstance(outcome, inventory.ReservationRejected)
    assert outcome.quantities == ()
    assert outcome.reason is inventory.RejectionReason.ORDER_CANCELLED


def test_timeouts_nest_below_ack_wait() -> None:
    for settings in (RuntimeSettings(), RuntimeSettings(ack_wait_s=2.0)):
        assert settings.call_timeout < settings.handler_timeout < settings.ack_wait_s


@pytest.mark.parametrize(
    "settings",
    [
        RuntimeSettings(),
        RuntimeSettings(max_deliveries=10, backoff_base_s=1.0, backoff_max_s=30.0),
        RuntimeSettings(gap_hold_delay_s=0.01, handler_timeout_s=1.0),
    ],
)
def test_a_held_successor_outlasts_its_predecessors_whole_retry_budget(
    settings: RuntimeSettings,
) -> None:
    held = sum(settings.gap_hold_delay(n) for n in range(1, settings.gap_holds + 1))
    assert held >= settings.retry_budget_s + settings.gap_hold_margin_s
    assert settings.gap_holds >= settings.gap_hold_max
    # The server's bound is above every delivery the runtime may ask for.
    assert settings.server_max_deliver(ordered=False) > settings.max_deliveries
    assert settings.server_max_deliver(ordered=True) > settings.max_deliveries + settings.gap_holds


def test_a_customer_told_of_the_cancellation_is_not_told_of_a_late_shipment() -> None:
    cancelled = notification.order_cancelled(
        "o1", "cust-alice", "DEADLINE_EXCEEDED", notification.Channel.EMAIL
    )
    assert "in time" in cancelled.message
    assert not notification.should_tell_shipped([cancelled])
    assert notification.should_tell_shipped([])
