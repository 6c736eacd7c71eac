"""ShippingService over gRPC: reads only."""

from __future__ import annotations

import grpc

from choreo import validation
from choreo.grpc_errors import abort_not_found
from choreo.service import ServiceRuntime
from services.paging import read_page
from services.shipping import mapping, store
from shop.shipping.v1 import shipping_service_pb2 as pb
from shop.shipping.v1 import shipping_service_pb2_grpc as pb_grpc

SERVICE_NAME = "shop.shipping.v1.ShippingService"


class ShippingApi(pb_grpc.ShippingServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime

    async def GetShipment(
        self, request: pb.GetShipmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetShipmentResponse:
        async with self._runtime.db.read() as tx:
            shipment = await store.load_shipment(tx, request.order_id)
        if shipment is None:
            await abort_not_found(context, f"shipment for order {request.order_id!r}")
        return pb.GetShipmentResponse(shipment=mapping.shipment_to_proto(shipment))

    async def ListShipments(
        self, request: pb.ListShipmentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListShipmentsResponse:
        shipments, token = await read_page(
            self._runtime.db,
            context,
            lambda tx: store.page_of_shipments(tx, request.page_size, request.page_token),
        )
        return pb.ListShipmentsResponse(
            shipments=[mapping.shipment_to_proto(item) for item in shipments], next_page_token=token
        )


def add_to_server(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    # Every request is decoded and checked against its declared rules before a method runs.
    validation.add_servicer(
        server, pb.DESCRIPTOR.services_by_name["ShippingService"], ShippingApi(runtime)
    )
