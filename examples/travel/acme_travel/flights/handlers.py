"""The flights service's reactions: hold a seat for a new trip; give it back when the trip's
hotel had no room (the saga's compensation)."""

from __future__ import annotations

import logging

from acme.booking.v1 import events_pb2 as booking_events
from acme.flights.v1 import events_pb2 as flights_events
from acme.hotels.v1 import events_pb2 as hotels_events
from google.protobuf.message import Message

from acme_travel.flights import domain, store
from choreo.handling import Handler, HandlerContext

log = logging.getLogger(__name__)


async def on_trip_requested(ctx: HandlerContext, event: booking_events.TripRequested) -> None:
    if await store.seat_of(ctx.tx, event.trip_id) is not None:
        return  # this trip was decided already
    taken = await store.held_seats(ctx.tx, event.flight_number)
    seat = domain.hold(event.trip_id, event.flight_number, taken)
    await store.save_seat(ctx.tx, seat)
    if seat.status is domain.Status.HELD:
        ctx.emit(
            flights_events.SeatHeld(
                trip_id=seat.trip_id, flight_number=seat.flight_number, seat=seat.seat
            ),
            aggregate_id=seat.trip_id,
        )
        return
    ctx.emit(
        flights_events.SeatUnavailable(
            trip_id=seat.trip_id,
            flight_number=seat.flight_number,
            reason="sold_out",
            detail=f"flight {seat.flight_number} has no seat left",
        ),
        aggregate_id=seat.trip_id,
    )


async def on_room_unavailable(ctx: HandlerContext, event: hotels_events.RoomUnavailable) -> None:
    current = await store.seat_of(ctx.tx, event.trip_id)
    released = None if current is None else domain.release(current)
    if released is None:
        log.warning("trip %s: no held seat to release (%s)", event.trip_id, current)
        return
    await store.save_seat(ctx.tx, released)
    ctx.emit(
        flights_events.SeatReleased(
            trip_id=released.trip_id, flight_number=released.flight_number, seat=released.seat
        ),
        aggregate_id=released.trip_id,
    )


# Must equal the reactions of FlightsService in flights_service.proto (checked at start).
HANDLERS: dict[type[Message], Handler] = {
    booking_events.TripRequested: on_trip_requested,
    hotels_events.RoomUnavailable: on_room_unavailable,
}
