"""The hotels service's one reaction: a room for a trip whose seat is held, or a refusal that
starts the saga's compensation (the flights service releases the seat)."""

from __future__ import annotations

from acme.booking.v1 import events_pb2 as booking_events
from acme.hotels.v1 import events_pb2 as hotels_events
from google.protobuf.message import Message

from acme_travel.hotels import domain, store
from choreo.handling import Handler, HandlerContext


async def on_trip_flight_held(ctx: HandlerContext, event: booking_events.TripFlightHeld) -> None:
    if await store.room_of(ctx.tx, event.trip_id) is not None:
        return  # this trip was decided already
    taken = await store.booked_rooms(ctx.tx, event.hotel_id)
    room = domain.book(event.trip_id, event.hotel_id, event.nights, taken)
    await store.save_room(ctx.tx, room)
    if room.status is domain.Status.BOOKED:
        ctx.emit(
            hotels_events.RoomBooked(
                trip_id=room.trip_id, hotel_id=room.hotel_id, room=room.room, nights=room.nights
            ),
            aggregate_id=room.trip_id,
        )
        return
    ctx.emit(
        hotels_events.RoomUnavailable(
            trip_id=room.trip_id,
            hotel_id=room.hotel_id,
            reason="no_vacancy",
            detail=f"hotel {room.hotel_id} has no room left",
        ),
        aggregate_id=room.trip_id,
    )


# Must equal the reactions of HotelsService in hotels_service.proto (checked at start).
HANDLERS: dict[type[Message], Handler] = {
    booking_events.TripFlightHeld: on_trip_flight_held,
}
