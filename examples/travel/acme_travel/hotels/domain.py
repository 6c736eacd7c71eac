"""Room rules, free of I/O: which room a trip gets.

A hotel has ``FLOORS`` floors of ``ROOMS_PER_FLOOR`` rooms (101, 102, ... 520); a trip gets the
first room no other trip has. The hotel ``SOLD_OUT`` ("FULL") never has one, so the saga's last
step, and its compensation, can be driven by input alone.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

from acme_travel import SOLD_OUT

FLOORS = 5
ROOMS_PER_FLOOR = 20


class Status(enum.StrEnum):
    BOOKED = "booked"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Room:
    trip_id: str
    hotel_id: str
    room: str  # "" when the hotel was full
    nights: int
    status: Status


def rooms_of(hotel_id: str) -> list[str]:
    """Every room of a hotel, lowest first; none in the sold-out hotel."""
    if hotel_id == SOLD_OUT:
        return []
    return [
        f"{floor}{number:02d}"
        for floor in range(1, FLOORS + 1)
        for number in range(1, ROOMS_PER_FLOOR + 1)
    ]


def book(trip_id: str, hotel_id: str, nights: int, taken: Collection[str]) -> Room:
    """The first room not ``taken`` by another trip, or UNAVAILABLE when none is left."""
    for room in rooms_of(hotel_id):
        if room not in taken:
            return Room(trip_id, hotel_id, room, nights, Status.BOOKED)
    return Room(trip_id, hotel_id, "", nights, Status.UNAVAILABLE)
