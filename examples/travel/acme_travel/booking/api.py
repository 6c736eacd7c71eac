"""BookingService over gRPC: BookTrip starts the saga, GetBooking reads where it stands.

Requests pass the runtime's gRPC door first (``choreo.validation``): the buf.validate rules in
booking_service.proto are enforced before a method runs.
"""

from __future__ import annotations

import uuid

import grpc
from acme.booking.v1 import booking_service_pb2 as pb
from acme.booking.v1 import booking_service_pb2_grpc as pb_grpc
from acme.booking.v1 import events_pb2 as booking_events

from acme_travel.booking import domain, handlers, store
from choreo import validation
from choreo.grpc_errors import abort_not_found
from choreo.service import ServiceRuntime

SERVICE_NAME = "acme.booking.v1.BookingService"

STATUSES = {
    domain.Status.REQUESTED: pb.BOOKING_STATUS_REQUESTED,
    domain.Status.FLIGHT_HELD: pb.BOOKING_STATUS_FLIGHT_HELD,
    domain.Status.CONFIRMED: pb.BOOKING_STATUS_CONFIRMED,
    domain.Status.CANCELLED: pb.BOOKING_STATUS_CANCELLED,
}


def booking_to_proto(trip: domain.Trip) -> pb.Booking:
    return pb.Booking(
        trip_id=trip.trip_id,
        traveller_id=trip.traveller_id,
        flight_number=trip.flight_number,
        hotel_id=trip.hotel_id,
        nights=trip.nights,
        status=STATUSES[trip.status],
        seat=trip.seat,
        room=trip.room,
        cancellation_reason=handlers.REASONS.get(
            trip.reason, booking_events.CANCELLATION_REASON_UNSPECIFIED
        ),
        cancellation_detail=trip.detail,
    )


class BookingApi(pb_grpc.BookingServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime

    async def BookTrip(
        self, request: pb.BookTripRequest, context: grpc.aio.ServicerContext
    ) -> pb.BookTripResponse:
        """Record the trip and publish TripRequested, in one transaction."""
        trip = domain.Trip(
            trip_id=str(uuid.uuid4()),
            traveller_id=request.traveller_id,
            flight_number=request.flight_number,
            hotel_id=request.hotel_id,
            nights=request.nights,
        )
        async with self._runtime.unit_of_work(correlation_id=trip.trip_id) as uow:
            await store.save_trip(uow.tx, trip)
            uow.emit(
                booking_events.TripRequested(
                    trip_id=trip.trip_id,
                    traveller_id=trip.traveller_id,
                    flight_number=trip.flight_number,
                    hotel_id=trip.hotel_id,
                    nights=trip.nights,
                ),
                aggregate_id=trip.trip_id,
            )
        return pb.BookTripResponse(booking=booking_to_proto(trip))

    async def GetBooking(
        self, request: pb.GetBookingRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBookingResponse:
        async with self._runtime.db.read() as tx:
            trip = await store.load_trip(tx, request.trip_id)
        if trip is None:
            await abort_not_found(context, f"trip {request.trip_id!r}")
        return pb.GetBookingResponse(booking=booking_to_proto(trip))


def add_to_server(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    service = pb.DESCRIPTOR.services_by_name["BookingService"]
    validation.add_servicer(server, service, BookingApi(runtime))
