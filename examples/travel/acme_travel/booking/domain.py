"""A trip's life, free of I/O: each event moves it one step, or changes nothing.

REQUESTED -> FLIGHT_HELD -> CONFIRMED, or REQUESTED -> CANCELLED (no seat) and
FLIGHT_HELD -> CANCELLED (no room; the seat was released first). Each trigger is caused by the
step before it, so none can overtake another; a trigger for a trip that is not where it
expects (a redelivery after the inbox was pruned, say) returns None and emits nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class Status(enum.StrEnum):
    REQUESTED = "requested"
    FLIGHT_HELD = "flight_held"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


class Reason(enum.StrEnum):
    NONE = ""
    FLIGHT_UNAVAILABLE = "flight_unavailable"
    HOTEL_UNAVAILABLE = "hotel_unavailable"


@dataclass(frozen=True)
class Trip:
    trip_id: str
    traveller_id: str
    flight_number: str
    hotel_id: str
    nights: int
    status: Status = Status.REQUESTED
    seat: str = ""
    room: str = ""
    reason: Reason = Reason.NONE
    detail: str = ""


def on_seat_held(trip: Trip, seat: str) -> Trip | None:
    if trip.status is not Status.REQUESTED:
        return None
    return replace(trip, status=Status.FLIGHT_HELD, seat=seat)


def on_room_booked(trip: Trip, room: str) -> Trip | None:
    if trip.status is not Status.FLIGHT_HELD:
        return None
    return replace(trip, status=Status.CONFIRMED, room=room)


def on_seat_unavailable(trip: Trip, detail: str) -> Trip | None:
    if trip.status is not Status.REQUESTED:
        return None
    return replace(trip, status=Status.CANCELLED, reason=Reason.FLIGHT_UNAVAILABLE, detail=detail)


def on_seat_released(trip: Trip) -> Trip | None:
    """The compensation's last step: the hotel had no room and the seat is given back."""
    if trip.status is not Status.FLIGHT_HELD:
        return None
    detail = f"hotel {trip.hotel_id} had no room; seat {trip.seat} was released"
    return replace(trip, status=Status.CANCELLED, reason=Reason.HOTEL_UNAVAILABLE, detail=detail)
