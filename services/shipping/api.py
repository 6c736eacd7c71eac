"""ShippingService over gRPC: reads only."""

from __future__ import annotations

import grpc

from choreo.grpc_errors import abort_invalid, abort_not_found
from choreo.service import ServiceRuntime
from choreo.shipping.v1 import shipping_service_pb2 as pb
from choreo.shipping.v1 import shipping_service_pb2_grpc as pb_grpc
from services.shipping import mapping, store

SERVICE_NAME = "choreo.shipping.v1.ShippingService"


class ShippingApi(pb_grpc.ShippingServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime

    async def GetShipment(
        self, request: pb.GetShipmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetShipmentResponse:
        if not request.order_id:
            await abort_invalid(context, [("order_id", "must not be empty")])
        async with self._runtime.db.read() as tx:
            shipment = await store.load_shipment(tx, request.order_id)
        if shipment is None:
            await abort_not_found(context, f"shipment for order {request.order_id!r}")
        return pb.GetShipmentResponse(shipment=mapping.shipment_to_proto(shipment))


def add_to_server(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    pb_grpc.add_ShippingServiceServicer_to_server(ShippingApi(runtime), server)
