"""PaymentService over gRPC: reads only."""

from __future__ import annotations

import grpc

from choreo import validation
from choreo.grpc_errors import abort_not_found
from choreo.service import ServiceRuntime
from services.paging import read_page
from services.payment import mapping, store
from shop.payment.v1 import payment_service_pb2 as pb
from shop.payment.v1 import payment_service_pb2_grpc as pb_grpc

SERVICE_NAME = "shop.payment.v1.PaymentService"


class PaymentApi(pb_grpc.PaymentServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime

    async def GetPayment(
        self, request: pb.GetPaymentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPaymentResponse:
        async with self._runtime.db.read() as tx:
            payment = await store.load_payment(tx, request.order_id)
        if payment is None:
            await abort_not_found(context, f"payment for order {request.order_id!r}")
        return pb.GetPaymentResponse(payment=mapping.payment_to_proto(payment))

    async def ListPayments(
        self, request: pb.ListPaymentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPaymentsResponse:
        payments, token = await read_page(
            self._runtime.db,
            context,
            lambda tx: store.page_of_payments(tx, request.page_size, request.page_token),
        )
        return pb.ListPaymentsResponse(
            payments=[mapping.payment_to_proto(item) for item in payments], next_page_token=token
        )


def add_to_server(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    # Every request is decoded and checked against its declared rules before a method runs.
    validation.add_servicer(
        server, pb.DESCRIPTOR.services_by_name["PaymentService"], PaymentApi(runtime)
    )
