"""The booking service's reactions: each moves the trip one step and announces it.

The trip row and the event that announces its new state commit in one transaction with the
runtime's inbox record, so a redelivered trigger changes nothing.
"""

from __future__ import annotations

import logging

from acme.booking.v1 import events_pb2 as booking_events
from acme.flights.v1 import events_pb2 as flights_events
from acme.hotels.v1 import events_pb2 as hotels_events
from google.protobuf.message import Message

from acme_travel.booking import domain, store
from choreo.handling import Handler, HandlerContext

log = logging.getLogger(__name__)

REASONS = {
    domain.Reason.FLIGHT_UNAVAILABLE: booking_events.CANCELLATION_REASON_FLIGHT_UNAVAILABLE,
    domain.Reason.HOTEL_UNAVAILABLE: booking_events.CANCELLATION_REASON_HOTEL_UNAVAILABLE,
}


async def _trip(ctx: HandlerContext, trip_id: str) -> domain.Trip | None:
    trip = await store.load_trip(ctx.tx, trip_id)
    if trip is None:
        log.warning("trip %s: an event for a trip this service never booked", trip_id)
    return trip


def _cancel(ctx: HandlerContext, trip: domain.Trip) -> None:
    ctx.emit(
        booking_events.TripCancelled(
            trip_id=trip.trip_id,
            traveller_id=trip.traveller_id,
            reason=REASONS[trip.reason],
            detail=trip.detail,
        ),
        aggregate_id=trip.trip_id,
    )


async def on_seat_held(ctx: HandlerContext, event: flights_events.SeatHeld) -> None:
    trip = await _trip(ctx, event.trip_id)
    held = None if trip is None else domain.on_seat_held(trip, event.seat)
    if held is None:
        return
    await store.save_trip(ctx.tx, held)
    ctx.emit(
        booking_events.TripFlightHeld(
            trip_id=held.trip_id,
            traveller_id=held.traveller_id,
            seat=held.seat,
            hotel_id=held.hotel_id,
            nights=held.nights,
        ),
        aggregate_id=held.trip_id,
    )


async def on_room_booked(ctx: HandlerContext, event: hotels_events.RoomBooked) -> None:
    trip = await _trip(ctx, event.trip_id)
    confirmed = None if trip is None else domain.on_room_booked(trip, event.room)
    if confirmed is None:
        return
    await store.save_trip(ctx.tx, confirmed)
    ctx.emit(
        booking_events.TripConfirmed(
            trip_id=confirmed.trip_id,
            traveller_id=confirmed.traveller_id,
            seat=confirmed.seat,
            room=confirmed.room,
        ),
        aggregate_id=confirmed.trip_id,
    )


async def on_seat_unavailable(ctx: HandlerContext, event: flights_events.SeatUnavailable) -> None:
    trip = await _trip(ctx, event.trip_id)
    cancelled = None if trip is None else domain.on_seat_unavailable(trip, event.detail)
    if cancelled is None:
        return
    await store.save_trip(ctx.tx, cancelled)
    _cancel(ctx, cancelled)


async def on_seat_released(ctx: HandlerContext, event: flights_events.SeatReleased) -> None:
    trip = await _trip(ctx, event.trip_id)
    cancelled = None if trip is None else domain.on_seat_released(trip)
    if cancelled is None:
        return
    await store.save_trip(ctx.tx, cancelled)
    _cancel(ctx, cancelled)


# Must equal the reactions of BookingService in booking_service.proto (checked at start).
HANDLERS: dict[type[Message], Handler] = {
    flights_events.SeatHeld: on_seat_held,
    hotels_events.RoomBooked: on_room_booked,
    flights_events.SeatUnavailable: on_seat_unavailable,
    flights_events.SeatReleased: on_seat_released,
}
