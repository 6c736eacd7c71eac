"""InventoryService over gRPC: reads only, mapping requests to store queries."""

from __future__ import annotations

import grpc

from choreo.grpc_errors import abort_invalid, abort_not_found
from choreo.inventory.v1 import inventory_service_pb2 as pb
from choreo.inventory.v1 import inventory_service_pb2_grpc as pb_grpc
from choreo.service import ServiceRuntime
from services.inventory import domain, mapping, store

SERVICE_NAME = "choreo.inventory.v1.InventoryService"


class InventoryApi(pb_grpc.InventoryServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime

    async def GetStock(
        self, request: pb.GetStockRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStockResponse:
        if not request.sku:
            await abort_invalid(context, [("sku", "must not be empty")])
        async with self._runtime.db.read() as tx:
            level = await store.stock_level(tx, request.sku)
        if level is None:
            await abort_not_found(context, f"sku {request.sku!r}")
        return pb.GetStockResponse(stock_level=mapping.stock_level(level))

    async def GetReservation(
        self, request: pb.GetReservationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetReservationResponse:
        if not request.order_id:
            await abort_invalid(context, [("order_id", "must not be empty")])
        async with self._runtime.db.read() as tx:
            reservation = await store.load_reservation(tx, request.order_id)
        # A rejected order reserved nothing, so it has no reservation to show.
        if reservation is None or reservation.status is domain.ReservationStatus.REJECTED:
            await abort_not_found(context, f"reservation for order {request.order_id!r}")
        return pb.GetReservationResponse(reservation=mapping.reservation(reservation))


def add_to_server(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    pb_grpc.add_InventoryServiceServicer_to_server(InventoryApi(runtime), server)
