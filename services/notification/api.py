"""NotificationService over gRPC: list an order's or a customer's notifications, paged."""

from __future__ import annotations

import grpc

from choreo import validation
from choreo.grpc_errors import abort_invalid
from choreo.service import ServiceRuntime
from services.notification import mapping, store
from shop.notification.v1 import notification_service_pb2 as pb
from shop.notification.v1 import notification_service_pb2_grpc as pb_grpc

SERVICE_NAME = "shop.notification.v1.NotificationService"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


class NotificationApi(pb_grpc.NotificationServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime

    async def ListNotifications(
        self, request: pb.ListNotificationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListNotificationsResponse:
        # Each field's own rules were checked at the door (choreo.validation); what is left is
        # the token, which only this service can read. Filters are optional: without them the
        # most recent notifications of all orders are listed.
        after = mapping.parse_page_token(request.page_token) if request.page_token else None
        if request.page_token and after is None:
            await abort_invalid(
                context, [("page_token", "is not a token from a previous response")]
            )
        # Larger pages are clamped rather than refused, as AIP-158 suggests.
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        async with self._runtime.db.read() as tx:
            rows = await store.list_notifications(
                tx,
                order_id=request.order_id,
                customer_id=request.customer_id,
                limit=size + 1,
                after=after,
            )
        page, more = rows[:size], len(rows) > size
        last_notification, last_sent_at = page[-1] if page else (None, "")
        return pb.ListNotificationsResponse(
            notifications=[mapping.notification_to_proto(n, sent_at) for n, sent_at in page],
            next_page_token=(
                mapping.page_token(last_sent_at, last_notification.notification_id)
                if more and last_notification is not None
                else ""
            ),
        )


def add_to_server(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    # Every request is decoded and checked against its declared rules before a method runs.
    service = pb.DESCRIPTOR.services_by_name["NotificationService"]
    validation.add_servicer(server, service, NotificationApi(runtime))
