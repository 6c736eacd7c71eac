"""Inventory decisions: reserve stock for an order atomically, then release or ship it.

Stock for a SKU moves between three buckets and is never created or lost:
``initial = available + reserved + shipped`` (invariant 2). Decisions are pure: they return
the per-SKU deltas to apply, and the store applies them with a guard against concurrent writers.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


class LineLike(Protocol):
    @property
    def sku(self) -> str: ...

    @property
    def quantity(self) -> int: ...


@dataclass(frozen=True, slots=True)
class StockLevel:
    sku: str
    initial: int
    available: int
    reserved: int
    shipped: int

    @property
    def is_conserved(self) -> bool:
        return self.initial == self.available + self.reserved + self.shipped


@dataclass(frozen=True, slots=True)
class SkuQuantity:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class StockAdjustment:
    """Deltas for one SKU; they always sum to zero so stock is conserved."""

    sku: str
    available: int = 0
    reserved: int = 0
    shipped: int = 0


class ReservationStatus(enum.StrEnum):
    RESERVED = "RESERVED"
    REJECTED = "REJECTED"
    RELEASED = "RELEASED"
    SHIPPED = "SHIPPED"
    # Shipped out for an order that turned out cancelled (a late ShipmentCreated won the race
    # against the cancellation, and shipping cancelled that booking at the carrier): the goods
    # never went, so they are put back on the shelf, available again.
    RETURNED = "RETURNED"


class RejectionReason(enum.StrEnum):
    UNKNOWN_SKU = "UNKNOWN_SKU"
    INSUFFICIENT_STOCK = "INSUFFICIENT_STOCK"
    # Never emitted: the order was cancelled at its deadline before its stock was reserved.
    ORDER_CANCELLED = "ORDER_CANCELLED"


@dataclass(frozen=True, slots=True)
class Shortage:
    sku: str
    requested: int
    available: int


@dataclass(frozen=True, slots=True)
class Reserved:
    quantities: tuple[SkuQuantity, ...]
    adjustments: tuple[StockAdjustment, ...]


@dataclass(frozen=True, slots=True)
class ReservationRejected:
    quantities: tuple[SkuQuantity, ...]
    reason: RejectionReason
    shortages: tuple[Shortage, ...]


@dataclass(frozen=True, slots=True)
class Reservation:
    order_id: str
    reservation_id: str
    status: ReservationStatus
    quantities: tuple[SkuQuantity, ...]


@dataclass(frozen=True, slots=True)
class Transition:
    """A reservation moves to ``status`` and these stock deltas are applied."""

    status: ReservationStatus
    adjustments: tuple[StockAdjustment, ...]


@dataclass(frozen=True, slots=True)
class NoChange:
    """Nothing to do; ``why`` is for logs (a duplicate, or an event that arrived too late)."""

    why: str


_RESERVATION_NAMESPACE = uuid.UUID("6f1c7e0e-3f57-4f0e-9a57-2b8d6c1d9a10")


def reservation_id_for(order_id: str) -> str:
    # Derived, not random: a retried handler computes the same id, so nothing downstream sees
    # two reservation ids for one order.
    return str(uuid.uuid5(_RESERVATION_NAMESPACE, order_id))


def summed(lines: Iterable[LineLike]) -> tuple[SkuQuantity, ...]:
    """Quantities per SKU in first-seen order; two lines for one SKU need their sum in stock."""
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.sku] = totals.get(line.sku, 0) + line.quantity
    return tuple(SkuQuantity(sku, qty) for sku, qty in totals.items())


def reserve(
    stock: Mapping[str, StockLevel], lines: Iterable[LineLike]
) -> Reserved | ReservationRejected:
    """Reserve every line, or none: one short or unknown SKU rejects the whole order."""
    quantities = summed(lines)
    unknown = tuple(Shortage(q.sku, q.quantity, 0) for q in quantities if q.sku not in stock)
    if unknown:
        return ReservationRejected(quantities, RejectionReason.UNKNOWN_SKU, unknown)
    short = tuple(
        Shortage(q.sku, q.quantity, stock[q.sku].available)
        for q in quantities
        if stock[q.sku].available < q.quantity
    )
    if short:
        return ReservationRejected(quantities, RejectionReason.INSUFFICIENT_STOCK, short)
    adjustments = tuple(
        StockAdjustment(q.sku, available=-q.quantity, reserved=q.quantity) for q in quantities
    )
    return Reserved(quantities, adjustments)


def release(reservation: Reservation | None) -> Transition | NoChange:
    """Give reserved stock back (payment or shipping failed)."""
    if reservation is None:
        return NoChange("no reservation for this order")
    if reservation.status is not ReservationStatus.RESERVED:
        # Released twice, or released after shipping: giving stock back again would create it.
        return NoChange(f"reservation is {reservation.status}, nothing to release")
    adjustments = tuple(
        StockAdjustment(q.sku, available=q.quantity, reserved=-q.quantity)
        for q in reservation.quantities
    )
    return Transition(ReservationStatus.RELEASED, adjustments)


def ship(reservation: Reservation | None) -> Transition | NoChange:
    """Reserved stock leaves the warehouse (the shipment was created)."""
    if reservation is None:
        return NoChange("no reservation for this order")
    if reservation.status is not ReservationStatus.RESERVED:
        return NoChange(f"reservation is {reservation.status}, nothing to ship")
    adjustments = tuple(
        StockAdjustment(q.sku, reserved=-q.quantity, shipped=q.quantity)
        for q in reservation.quantities
    )
    return Transition(ReservationStatus.SHIPPED, adjustments)


def return_shipped(reservation: Reservation | None) -> Transition | NoChange:
    """Stock shipped out for a cancelled order comes back: shipped -> available.

    A cancellation wins against a late shipment: the booking is cancelled at the carrier, so
    what left the warehouse with it is returned, and a cancelled order keeps no stock (the
    alternative, leaving it counted as shipped, would conserve the sum but lose the goods)."""
    if reservation is None or reservation.status is not ReservationStatus.SHIPPED:
        return NoChange("nothing was shipped for this order")
    adjustments = tuple(
        StockAdjustment(q.sku, available=q.quantity, shipped=-q.quantity)
        for q in reservation.quantities
    )
    return Transition(ReservationStatus.RETURNED, adjustments)


def apply(level: StockLevel, adjustment: StockAdjustment) -> StockLevel:
    """The level after an adjustment; what the store does in SQL, for tests and checks."""
    return StockLevel(
        level.sku,
        level.initial,
        level.available + adjustment.available,
        level.reserved + adjustment.reserved,
        level.shipped + adjustment.shipped,
    )


def unconserved(levels: Iterable[StockLevel]) -> list[StockLevel]:
    """Levels that break ``initial = available + reserved + shipped``; empty when all is well."""
    return [level for level in levels if not level.is_conserved]


DEADLINE_CANCELLATION = "CANCELLATION_REASON_DEADLINE_EXCEEDED"


def compensates_cancellation(reason: str) -> bool:
    """Only a cancellation at the saga deadline is inventory's to undo: for the other reasons
    the failure event that caused it (PaymentFailed, ShippingFailed) releases the stock."""
    return reason == DEADLINE_CANCELLATION


def cancel_before_reserving() -> ReservationRejected:
    """An order cancelled before its OrderCreated reached inventory: recorded as rejected, so a
    late OrderCreated reserves nothing (a reservation outcome is recorded once per order)."""
    return ReservationRejected((), RejectionReason.ORDER_CANCELLED, ())
