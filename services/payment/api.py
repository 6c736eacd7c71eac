"""PaymentService over gRPC: reads only."""

from __future__ import annotations

import grpc

from choreo.grpc_errors import abort_invalid, abort_not_found
from choreo.payment.v1 import payment_service_pb2 as pb
from choreo.payment.v1 import payment_service_pb2_grpc as pb_grpc
from choreo.service import ServiceRuntime
from services.payment import mapping, store

SERVICE_NAME = "choreo.payment.v1.PaymentService"


class PaymentApi(pb_grpc.PaymentServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime

    async def GetPayment(
        self, request: pb.GetPaymentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPaymentResponse:
        if not request.order_id:
            await abort_invalid(context, [("order_id", "must not be empty")])
        async with self._runtime.db.read() as tx:
            payment = await store.load_payment(tx, request.order_id)
        if payment is None:
            await abort_not_found(context, f"payment for order {request.order_id!r}")
        return pb.GetPaymentResponse(payment=mapping.payment_to_proto(payment))


def add_to_server(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    pb_grpc.add_PaymentServiceServicer_to_server(PaymentApi(runtime), server)
