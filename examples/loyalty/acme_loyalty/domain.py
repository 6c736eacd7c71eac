"""Loyalty rules, free of I/O: what an order earns, and what a cancellation takes back.

The two triggers come from different streams (payment's and order's), so they can arrive in
either order; the rules below give the same end state both ways.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MINOR_UNITS_PER_POINT = 100  # one point per whole unit of the currency charged


class Status(enum.StrEnum):
    AWARDED = "awarded"  # credited, counts in the balance
    REVOKED = "revoked"  # credited, then taken back: the order was cancelled
    VOID = "void"  # cancelled before it was paid for: earns nothing, even if paid later


@dataclass(frozen=True)
class OrderPoints:
    order_id: str
    customer_id: str
    points: int
    status: Status


def points_for(amount_minor_units: int) -> int:
    """Points for a charge: whole units only, never negative."""
    return max(0, amount_minor_units) // MINOR_UNITS_PER_POINT


def on_paid(
    current: OrderPoints | None, order_id: str, customer_id: str, amount: int
) -> OrderPoints | None:
    """The order's points after its payment; None when the payment changes nothing (already
    awarded, or the order was cancelled first)."""
    if current is not None:
        return None
    return OrderPoints(order_id, customer_id, points_for(amount), Status.AWARDED)


def on_cancelled(current: OrderPoints | None, order_id: str, customer_id: str) -> OrderPoints:
    """The order's points after its cancellation: revoked if awarded, else void for good."""
    if current is None:
        return OrderPoints(order_id, customer_id, 0, Status.VOID)
    if current.status is Status.AWARDED:
        return OrderPoints(current.order_id, current.customer_id, current.points, Status.REVOKED)
    return current
