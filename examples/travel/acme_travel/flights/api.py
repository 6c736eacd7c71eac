"""FlightsService over gRPC: the seat of one trip (validated at the runtime's door)."""

from __future__ import annotations

import grpc
from acme.flights.v1 import flights_service_pb2 as pb
from acme.flights.v1 import flights_service_pb2_grpc as pb_grpc

from acme_travel.flights import domain, store
from choreo import validation
from choreo.grpc_errors import abort_not_found
from choreo.service import ServiceRuntime

SERVICE_NAME = "acme.flights.v1.FlightsService"

STATUSES = {
    domain.Status.HELD: pb.SEAT_STATUS_HELD,
    domain.Status.UNAVAILABLE: pb.SEAT_STATUS_UNAVAILABLE,
    domain.Status.RELEASED: pb.SEAT_STATUS_RELEASED,
}


class FlightsApi(pb_grpc.FlightsServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime

    async def GetSeat(
        self, request: pb.GetSeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSeatResponse:
        async with self._runtime.db.read() as tx:
            seat = await store.seat_of(tx, request.trip_id)
        if seat is None:
            await abort_not_found(context, f"the seat of trip {request.trip_id!r}")
        return pb.GetSeatResponse(
            trip_id=seat.trip_id,
            flight_number=seat.flight_number,
            seat=seat.seat,
            status=STATUSES[seat.status],
        )


def add_to_server(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    service = pb.DESCRIPTOR.services_by_name["FlightsService"]
    validation.add_servicer(server, service, FlightsApi(runtime))
