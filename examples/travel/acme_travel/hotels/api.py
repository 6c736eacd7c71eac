"""HotelsService over gRPC: the room of one trip (validated at the runtime's door)."""

from __future__ import annotations

import grpc
from acme.hotels.v1 import hotels_service_pb2 as pb
from acme.hotels.v1 import hotels_service_pb2_grpc as pb_grpc

from acme_travel.hotels import domain, store
from choreo import validation
from choreo.grpc_errors import abort_not_found
from choreo.service import ServiceRuntime

SERVICE_NAME = "acme.hotels.v1.HotelsService"

STATUSES = {
    domain.Status.BOOKED: pb.ROOM_STATUS_BOOKED,
    domain.Status.UNAVAILABLE: pb.ROOM_STATUS_UNAVAILABLE,
}


class HotelsApi(pb_grpc.HotelsServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime

    async def GetRoom(
        self, request: pb.GetRoomRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRoomResponse:
        async with self._runtime.db.read() as tx:
            room = await store.room_of(tx, request.trip_id)
        if room is None:
            await abort_not_found(context, f"the room of trip {request.trip_id!r}")
        return pb.GetRoomResponse(
            trip_id=room.trip_id,
            hotel_id=room.hotel_id,
            room=room.room,
            nights=room.nights,
            status=STATUSES[room.status],
        )


def add_to_server(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    service = pb.DESCRIPTOR.services_by_name["HotelsService"]
    validation.add_servicer(server, service, HotelsApi(runtime))
