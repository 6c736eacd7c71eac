"""LoyaltyService over gRPC: a customer's balance and one order's points.

Requests pass the runtime's gRPC door first (``choreo.validation``): the buf.validate rules in
loyalty_service.proto are enforced before a method runs.
"""

from __future__ import annotations

import grpc
from acme.loyalty.v1 import loyalty_service_pb2 as pb
from acme.loyalty.v1 import loyalty_service_pb2_grpc as pb_grpc

from acme_loyalty import domain, store
from choreo import validation
from choreo.grpc_errors import abort_not_found
from choreo.service import ServiceRuntime

SERVICE_NAME = "acme.loyalty.v1.LoyaltyService"

STATUSES = {
    domain.Status.AWARDED: pb.ORDER_POINTS_STATUS_AWARDED,
    domain.Status.REVOKED: pb.ORDER_POINTS_STATUS_REVOKED,
    domain.Status.VOID: pb.ORDER_POINTS_STATUS_VOID,
}


class LoyaltyApi(pb_grpc.LoyaltyServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime

    async def GetAccount(
        self, request: pb.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAccountResponse:
        async with self._runtime.db.read() as tx:
            balance = await store.balance_of(tx, request.customer_id)
        if balance is None:
            await abort_not_found(context, f"loyalty account of customer {request.customer_id!r}")
        return pb.GetAccountResponse(customer_id=request.customer_id, balance=balance)

    async def GetOrderPoints(
        self, request: pb.GetOrderPointsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetOrderPointsResponse:
        async with self._runtime.db.read() as tx:
            points = await store.order_points(tx, request.order_id)
        if points is None:
            await abort_not_found(context, f"order {request.order_id!r}")
        return pb.GetOrderPointsResponse(
            order_id=points.order_id,
            customer_id=points.customer_id,
            points=points.points,
            status=STATUSES[points.status],
        )


def add_to_server(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    service = pb.DESCRIPTOR.services_by_name["LoyaltyService"]
    validation.add_servicer(server, service, LoyaltyApi(runtime))
