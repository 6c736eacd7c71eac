"""Proto ⇄ domain for notifications: kinds, channels, cancellation reasons, page tokens."""

from __future__ import annotations

import base64
import binascii
import json

from google.protobuf import timestamp_pb2

from services.notification import domain
from services.values import from_iso
from shop.notification.v1 import events_pb2, notification_service_pb2
from shop.order.v1 import events_pb2 as order_events

KINDS = {
    domain.NotificationKind.ORDER_SHIPPED: events_pb2.NOTIFICATION_KIND_ORDER_SHIPPED,
    domain.NotificationKind.ORDER_CANCELLED: events_pb2.NOTIFICATION_KIND_ORDER_CANCELLED,
}

CHANNELS = {
    domain.Channel.EMAIL: events_pb2.CHANNEL_EMAIL,
    domain.Channel.SMS: events_pb2.CHANNEL_SMS,
}

_REASON_PREFIX = "CANCELLATION_REASON_"


def cancellation_reason(reason: order_events.CancellationReason.ValueType) -> str:
    """The order's reason as the domain names it: ``PAYMENT_FAILED``, not the proto name."""
    try:
        name = order_events.CancellationReason.Name(reason)
    except ValueError:
        return "UNSPECIFIED"
    return name.removeprefix(_REASON_PREFIX)


def notification_sent(n: domain.Notification) -> events_pb2.NotificationSent:
    return events_pb2.NotificationSent(
        notification_id=n.notification_id,
        order_id=n.order_id,
        customer_id=n.customer_id,
        channel=CHANNELS[n.channel],
        kind=KINDS[n.kind],
        message=n.message,
    )


def notification_to_proto(
    n: domain.Notification, sent_at: str
) -> notification_service_pb2.Notification:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(from_iso(sent_at))
    return notification_service_pb2.Notification(
        notification_id=n.notification_id,
        order_id=n.order_id,
        customer_id=n.customer_id,
        channel=CHANNELS[n.channel],
        kind=KINDS[n.kind],
        message=n.message,
        sent_at=stamp,
    )


def page_token(sent_at: str, notification_id: str) -> str:
    raw = json.dumps([sent_at, notification_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def parse_page_token(token: str) -> tuple[str, str] | None:
    """The position a token points after, or None when it is not one of ours."""
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return value[0], value[1]
    return None
