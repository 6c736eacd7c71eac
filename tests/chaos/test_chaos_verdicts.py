"""The chaos run's own judgement, without a system: which outcome a fault explains, and what
its operator does with each kind of dead letter (fast; the runs themselves are in
test_chaos.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from rich.console import Console

from choreo import dlq
from choreo.envelope import H_CORRELATION_ID, H_TYPE
from services.workload import Placed, SagaPath
from shop.order.v1 import events_pb2 as order_events
from shop.order.v1 import order_service_pb2 as order_pb
from tools.chaos import CRASH_EVENT, Chaos, ChaosConfig

OUTAGE = ("payment", 1_000.0, 1_030.0)  # wall clock, as the events' ce-time


@pytest.fixture
def chaos() -> Iterator[Chaos]:
    made = Chaos(ChaosConfig(), Console(quiet=True))
    made.provider_fault_wall = [OUTAGE]
    yield made
    made.workdir.rmdir()  # empty: no system was started


def _cancelled(order_id: str, reason: int) -> Placed:
    return Placed(
        order_id,
        SagaPath.HAPPY,
        placed_at=0.0,
        status=order_pb.ORDER_STATUS_CANCELLED,
        cancellation_reason=reason,
    )


def test_a_payment_failure_inside_the_outage_is_the_outage_whatever_the_letters_say(
    chaos: Chaos,
) -> None:
    """Issue 23, finding 3: the give-up's letter said delivery_limit_exceeded (or was never
    filed); the order was cancelled by a PaymentFailed published during the payment outage."""
    item = _cancelled("o-1", order_events.CANCELLATION_REASON_PAYMENT_FAILED)
    failed_at = {("payment", "o-1"): 1_010.0}
    assert chaos.accept_outcome(item, gave_up_on=set(), failed_at=failed_at) is None
    assert chaos.report.caught_by_provider_faults == 1
    # Also when the step gave up after the provider came back, its last attempts inside it.
    later = {("payment", "o-1"): OUTAGE[2] + chaos.retry_budget_s()}
    assert chaos.accept_outcome(item, gave_up_on=set(), failed_at=later) is None
    assert chaos.report.caught_by_provider_faults == 2


def test_a_failure_outside_any_window_of_its_provider_needs_a_give_up_letter(
    chaos: Chaos,
) -> None:
    payment_later = _cancelled("o-2", order_events.CANCELLATION_REASON_PAYMENT_FAILED)
    failed_at = {("payment", "o-2"): 5_000.0, ("shipping", "o-3"): 1_010.0}
    wrong = chaos.accept_outcome(payment_later, gave_up_on=set(), failed_at=failed_at)
    assert wrong is not None and "PAYMENT_FAILED" in wrong
    # The payment outage explains no shipping failure.
    shipping = _cancelled("o-3", order_events.CANCELLATION_REASON_SHIPPING_FAILED)
    assert chaos.accept_outcome(shipping, gave_up_on=set(), failed_at=failed_at) is not None
    # A give-up the letters show (kills, say) is accepted, and counted as such.
    assert chaos.accept_outcome(payment_later, gave_up_on={"o-2"}, failed_at=failed_at) is None
    assert chaos.report.gave_up_under_kills == 1
    assert chaos.report.caught_by_provider_faults == 0


def _letter(
    seq: int,
    service: str,
    *,
    alarm: bool = False,
    compensated: bool = False,
    order: str = "o-9",
    event_type: str = "shop.inventory.v1.InventoryReserved",
) -> dlq.DeadLetter:
    headers = {H_CORRELATION_ID: order, H_TYPE: event_type}
    if alarm:
        headers[dlq.H_ALARM] = "true"
    if compensated:
        headers[dlq.H_COMPENSATED] = "true"
    return dlq.DeadLetter(
        seq=seq,
        service=service,
        reason="r",
        detail="",
        subject="s",
        headers=headers,
        body=b"",
        deliveries=1,
        dead_lettered_at=0.0,
    )


def test_the_operator_replays_alarms_discards_poison_and_the_crashing_message(
    chaos: Chaos,
) -> None:
    assert chaos.operator_choice(_letter(1, "payment", alarm=True)) == ("replay", "alarm")
    assert chaos.operator_choice(_letter(2, "order")) == ("discard", "poison")
    chaos.crash_orders.add("o-crash")
    crashing = _letter(3, "shipping", compensated=True, order="o-crash", event_type=CRASH_EVENT)
    assert chaos.operator_choice(crashing) == ("discard", "crashes_its_consumer")
    # The same order's other letters are not the crashing message: a refund alarm is replayed.
    refund = _letter(4, "payment", alarm=True, order="o-crash")
    assert chaos.operator_choice(refund) == ("replay", "alarm")
    # Compensated give-ups: some replayed, some discarded, some left (seeded).
    choices = {
        chaos.operator_choice(_letter(10 + i, "payment", compensated=True)) for i in range(60)
    }
    assert choices == {("replay", "give_up"), ("discard", "give_up"), ("leave", "give_up")}


def test_the_crashing_order_caught_by_a_payment_outage_first_is_the_outage(chaos: Chaos) -> None:
    """Placed just before the payment outage, it never reached shipping (seed 21 did this)."""
    chaos.crash_orders.add("o-crash")
    item = _cancelled("o-crash", order_events.CANCELLATION_REASON_PAYMENT_FAILED)
    assert chaos.accept_outcome(item, set(), {("payment", "o-crash"): 1_005.0}) is None
    assert chaos.report.caught_by_provider_faults == 1
    wrong = chaos.accept_outcome(item, set(), {("payment", "o-crash"): 9_000.0})
    assert wrong is not None and "crashes shipping" in wrong


def test_an_expected_cancellation_is_not_counted_as_the_outage(chaos: Chaos) -> None:
    declined = _cancelled("o-4", order_events.CANCELLATION_REASON_PAYMENT_FAILED)
    declined.path = SagaPath.PAYMENT_DECLINED
    assert chaos.accept_outcome(declined, set(), {("payment", "o-4"): 1_005.0}) is None
    assert chaos.report.caught_by_provider_faults == 0
