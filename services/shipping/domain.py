"""Shipping decisions: book one shipment per order and record what the provider answered.

The provider is external and keeps its own ledger; a refusal (unserviceable destination) is a
business outcome that fails the saga, while an outage is transient and retried with the same
idempotency key.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from services.values import Address


class ShipmentStatus(enum.StrEnum):
    BOOKED = "BOOKED"
    FAILED = "FAILED"
    # Booked, then cancelled at the carrier because the order was cancelled (a cancellation
    # that arrived after a late booking): nothing ships.
    CANCELLED = "CANCELLED"


class BookingStatus(enum.StrEnum):
    """Where a booking stands at the carrier now, as a real carrier reports it."""

    BOOKED = "BOOKED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True, slots=True)
class Booking:
    shipment_id: str
    tracking_id: str
    carrier: str
    # A booking found again by its key may have been cancelled since it was made.
    status: BookingStatus = BookingStatus.BOOKED


@dataclass(frozen=True, slots=True)
class Shipment:
    order_id: str
    status: ShipmentStatus
    destination: Address
    shipment_id: str = ""
    tracking_id: str = ""
    carrier: str = ""
    failure_reason: str = ""


def booking_key(order_id: str) -> str:
    # Derived from the order, so a retry after a crash gets the first booking back.
    return f"book:{order_id}"


def should_book(existing: Shipment | None) -> bool:
    """Book once per order; a recorded shipment (booked or failed) is the answer."""
    return existing is None


def booked(order_id: str, destination: Address, booking: Booking) -> Shipment:
    return Shipment(
        order_id,
        ShipmentStatus.BOOKED,
        destination,
        booking.shipment_id,
        booking.tracking_id,
        booking.carrier,
    )


def booking_cancelled(order_id: str, destination: Address, booking: Booking) -> Shipment:
    """The carrier answers, for our key, a booking it has since cancelled (a give-up whose
    cancel was taken but its answer lost, found again on a retry or an operator's replay): the
    shipment failed, it never ships."""
    return Shipment(
        order_id,
        ShipmentStatus.FAILED,
        destination,
        failure_reason=f"booking {booking.shipment_id} was cancelled at the carrier",
    )


def refused(order_id: str, destination: Address, reason: str) -> Shipment:
    return Shipment(order_id, ShipmentStatus.FAILED, destination, failure_reason=reason)


def gave_up(order_id: str, destination: Address, why: str) -> Shipment:
    """The provider did not answer within the retry budget: the booking key was cancelled, and
    the shipment fails, so the saga refunds and releases as for a refusal."""
    return Shipment(order_id, ShipmentStatus.FAILED, destination, failure_reason=why)


DEADLINE_CANCELLATION = "CANCELLATION_REASON_DEADLINE_EXCEEDED"


def compensates_cancellation(reason: str) -> bool:
    """Only a cancellation at the saga deadline is shipping's to undo: for every other reason
    the order was cancelled before (or because) nothing was booked."""
    return reason == DEADLINE_CANCELLATION


NOWHERE = Address(recipient_name="", line1="", city="", postal_code="", country_code="")


ORDER_CANCELLED = "order cancelled; booking cancelled at the carrier"


def cancelled(order_id: str) -> Shipment:
    """The shipment of an order cancelled at its deadline before it was booked: none, and none
    will be (the destination never reached shipping)."""
    return Shipment(
        order_id, ShipmentStatus.FAILED, NOWHERE, failure_reason="order cancelled at deadline"
    )
