"""Seat rules, free of I/O: which seat a trip gets, and what releasing it means.

A flight has ``ROWS`` rows of six seats; a trip gets the first seat no other trip holds (a
released seat is free again). The flight ``SOLD_OUT`` ("FULL") never has one, so the saga's
failure path can be driven by input alone.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass, replace

from acme_travel import SOLD_OUT

ROWS = 30
LETTERS = "ABCDEF"


class Status(enum.StrEnum):
    HELD = "held"
    UNAVAILABLE = "unavailable"
    RELEASED = "released"


@dataclass(frozen=True)
class Seat:
    trip_id: str
    flight_number: str
    seat: str  # "" when the flight was full
    status: Status


def seats_of(flight_number: str) -> list[str]:
    """Every seat of a flight, front to back: 1A, 1B, ... 30F; none on the sold-out flight."""
    if flight_number == SOLD_OUT:
        return []
    return [f"{row}{letter}" for row in range(1, ROWS + 1) for letter in LETTERS]


def hold(trip_id: str, flight_number: str, taken: Collection[str]) -> Seat:
    """The first seat not ``taken`` (held by other trips), or UNAVAILABLE when none is left."""
    for seat in seats_of(flight_number):
        if seat not in taken:
            return Seat(trip_id, flight_number, seat, Status.HELD)
    return Seat(trip_id, flight_number, "", Status.UNAVAILABLE)


def release(current: Seat) -> Seat | None:
    """The seat given back; None when there is nothing held to give back."""
    if current.status is not Status.HELD:
        return None
    return replace(current, status=Status.RELEASED)
