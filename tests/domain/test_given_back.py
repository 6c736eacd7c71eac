"""A charge or booking found again by its key is trusted only as far as its current status
(issue 23, finding 1), and stock shipped out for an order cancelled afterwards comes back
(issue 22, defect 2): the fakes' own ledgers and the pure decisions."""

from __future__ import annotations

from pathlib import Path

from services.inventory.domain import (
    NoChange,
    Reservation,
    ReservationStatus,
    SkuQuantity,
    StockLevel,
    Transition,
    apply,
    return_shipped,
)
from services.payment import mapping
from services.payment.domain import (
    CHARGE_GIVEN_BACK,
    ChargeStatus,
    PaymentStatus,
    charge_key,
    decide_charge,
    refund_key,
)
from services.payment.gateway import FakePaymentGateway
from services.shipping.domain import BookingStatus, ShipmentStatus, booking_cancelled, booking_key
from services.shipping.provider import FakeShippingProvider
from services.values import Address, Money
from shop.payment.v1 import events_pb2 as pay

HOME = Address("Ada Lovelace", "1 Main St", "Springfield", "12345", "US")
USD = Money(2500, "USD")


def gateway(tmp_path: Path) -> FakePaymentGateway:
    return FakePaymentGateway(tmp_path / "gateway.db")


async def test_a_charge_found_again_after_its_key_was_voided_says_voided(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    first = await gw.charge(charge_key("o1"), "c1", USD, "tok_ok", order_id="o1")
    assert first.approved and first.status is ChargeStatus.CAPTURED and first.kept
    voided = await gw.void(charge_key("o1"), order_id="o1")

    again = await gw.charge(charge_key("o1"), "c1", USD, "tok_ok", order_id="o1")
    assert again.charge_id == first.charge_id and again.approved
    assert (again.status, again.refund_id, again.kept) == (
        ChargeStatus.VOIDED,
        voided.refund_id,
        False,
    )
    counts = await gw.ledger_counts()
    assert (counts.charges, counts.refunds) == ({"o1": 1}, {"o1": 1})


async def test_a_charge_found_again_after_a_refund_says_refunded(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    first = await gw.charge(charge_key("o1"), "c1", USD, "tok_ok", order_id="o1")
    refund = await gw.refund(refund_key("o1"), first.charge_id)

    again = await gw.charge(charge_key("o1"), "c1", USD, "tok_ok", order_id="o1")
    assert (again.status, again.refund_id) == (ChargeStatus.REFUNDED, refund.refund_id)


async def test_a_given_back_charge_fails_the_payment_and_keeps_its_ids(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    await gw.charge(charge_key("o1"), "c1", USD, "tok_ok", order_id="o1")
    await gw.void(charge_key("o1"), order_id="o1")
    result = await gw.charge(charge_key("o1"), "c1", USD, "tok_ok", order_id="o1")

    payment = decide_charge("o1", "c1", USD, result)
    assert payment.status is PaymentStatus.FAILED
    assert payment.failure_reason == CHARGE_GIVEN_BACK
    assert (payment.charge_id, payment.refund_id) == (result.charge_id, result.refund_id)
    assert mapping.failure_reason(payment) == pay.PAYMENT_FAILURE_REASON_GATEWAY_UNAVAILABLE


async def test_a_captured_charge_still_completes_the_payment(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    result = await gw.charge(charge_key("o1"), "c1", USD, "tok_ok", order_id="o1")
    assert decide_charge("o1", "c1", USD, result).status is PaymentStatus.COMPLETED


async def test_a_booking_found_again_after_its_cancel_says_cancelled(tmp_path: Path) -> None:
    carrier = FakeShippingProvider(tmp_path / "carrier.db")
    first = await carrier.book(booking_key("o1"), "o1", HOME)
    assert first.status is BookingStatus.BOOKED
    assert await carrier.cancel(booking_key("o1"), "o1") == first.shipment_id

    again = await carrier.book(booking_key("o1"), "o1", HOME)
    assert again.shipment_id == first.shipment_id
    assert again.status is BookingStatus.CANCELLED
    counts = await carrier.ledger_counts()
    assert (counts.bookings, counts.cancelled) == ({"o1": 1}, {"o1": 1})
    shipment = booking_cancelled("o1", HOME, again)
    assert shipment.status is ShipmentStatus.FAILED
    assert again.shipment_id in shipment.failure_reason


def reservation(status: ReservationStatus) -> Reservation:
    return Reservation("o1", "r1", status, (SkuQuantity("SKU-A", 3), SkuQuantity("SKU-B", 1)))


def test_stock_shipped_for_a_cancelled_order_is_returned_and_conserved() -> None:
    decision = return_shipped(reservation(ReservationStatus.SHIPPED))
    assert isinstance(decision, Transition)
    assert decision.status is ReservationStatus.RETURNED
    shipped = {"SKU-A": StockLevel("SKU-A", 10, 7, 0, 3), "SKU-B": StockLevel("SKU-B", 5, 4, 0, 1)}
    after = [apply(shipped[a.sku], a) for a in decision.adjustments]
    assert [(lv.available, lv.reserved, lv.shipped) for lv in after] == [(10, 0, 0), (5, 0, 0)]
    assert all(lv.is_conserved for lv in after)


def test_only_shipped_stock_is_returned() -> None:
    for status in (
        ReservationStatus.RESERVED,
        ReservationStatus.RELEASED,
        ReservationStatus.REJECTED,
        ReservationStatus.RETURNED,
    ):
        assert isinstance(return_shipped(reservation(status)), NoChange)
    assert isinstance(return_shipped(None), NoChange)
