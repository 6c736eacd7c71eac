"""InventoryService over gRPC: reads only, mapping requests to store queries."""

from __future__ import annotations

import grpc

from choreo import validation
from choreo.grpc_errors import abort_not_found
from choreo.service import ServiceRuntime
from services.inventory import domain, mapping, store
from services.paging import read_page
from shop.inventory.v1 import inventory_service_pb2 as pb
from shop.inventory.v1 import inventory_service_pb2_grpc as pb_grpc

SERVICE_NAME = "shop.inventory.v1.InventoryService"


class InventoryApi(pb_grpc.InventoryServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime

    async def GetStock(
        self, request: pb.GetStockRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStockResponse:
        async with self._runtime.db.read() as tx:
            level = await store.stock_level(tx, request.sku)
        if level is None:
            await abort_not_found(context, f"sku {request.sku!r}")
        return pb.GetStockResponse(stock_level=mapping.stock_level(level))

    async def GetReservation(
        self, request: pb.GetReservationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetReservationResponse:
        async with self._runtime.db.read() as tx:
            reservation = await store.load_reservation(tx, request.order_id)
        # A rejected order reserved nothing, so it has no reservation to show.
        if reservation is None or reservation.status is domain.ReservationStatus.REJECTED:
            await abort_not_found(context, f"reservation for order {request.order_id!r}")
        return pb.GetReservationResponse(reservation=mapping.reservation(reservation))

    async def ListStock(
        self, request: pb.ListStockRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListStockResponse:
        levels, token = await read_page(
            self._runtime.db,
            context,
            lambda tx: store.list_stock(tx, request.page_size, request.page_token),
        )
        return pb.ListStockResponse(
            stock_levels=[mapping.stock_level(level) for level in levels], next_page_token=token
        )

    async def ListReservations(
        self, request: pb.ListReservationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListReservationsResponse:
        reservations, token = await read_page(
            self._runtime.db,
            context,
            lambda tx: store.list_reservations(tx, request.page_size, request.page_token),
        )
        return pb.ListReservationsResponse(
            reservations=[mapping.reservation(r) for r in reservations], next_page_token=token
        )


def add_to_server(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    # Every request is decoded and checked against its declared rules before a method runs.
    service = pb.DESCRIPTOR.services_by_name["InventoryService"]
    validation.add_servicer(server, service, InventoryApi(runtime))
