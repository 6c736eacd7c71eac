"""Notifications: one message per final state per order, on the customer's preferred channel.

The (order, kind) pair is the identity of a notification, so a redelivered OrderShipped or
OrderCancelled finds the notification already there and sends nothing (invariant 4).
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from services.catalog import Customer


class NotificationKind(enum.StrEnum):
    ORDER_SHIPPED = "ORDER_SHIPPED"
    ORDER_CANCELLED = "ORDER_CANCELLED"


class Channel(enum.StrEnum):
    EMAIL = "EMAIL"
    SMS = "SMS"


@dataclass(frozen=True, slots=True)
class Notification:
    notification_id: str
    order_id: str
    customer_id: str
    kind: NotificationKind
    channel: Channel
    message: str


_NOTIFICATION_NAMESPACE = uuid.UUID("b7a4f0c2-1e1f-4a53-9a0e-5f1c3d2e8b44")

# Customer-facing words for the machine reasons the order service records.
_CANCELLATION_TEXT = {
    "INVENTORY_UNAVAILABLE": "some items are out of stock",
    "PAYMENT_FAILED": "the payment did not go through",
    "SHIPPING_FAILED": "we cannot deliver to the shipping address",
    "DEADLINE_EXCEEDED": "we could not complete it in time",
}


def notification_id_for(order_id: str, kind: NotificationKind) -> str:
    return str(uuid.uuid5(_NOTIFICATION_NAMESPACE, f"{order_id}/{kind}"))


def choose_channel(customer: Customer | None) -> Channel:
    if customer is not None and customer.preferred_channel == Channel.SMS:
        return Channel.SMS
    return Channel.EMAIL


def order_shipped(
    order_id: str, customer_id: str, carrier: str, tracking_id: str, channel: Channel
) -> Notification:
    # An OrderShipped from an order service older than its carrier field names no carrier.
    by = f" with {carrier}" if carrier else ""
    message = f"Your order {order_id} has shipped{by}. Tracking number: {tracking_id}."
    kind = NotificationKind.ORDER_SHIPPED
    return Notification(
        notification_id_for(order_id, kind), order_id, customer_id, kind, channel, message
    )


def should_tell_shipped(sent: list[Notification]) -> bool:
    """No "shipped" after the customer was told of the cancellation: the customer hears of
    one final state only. The order service never publishes both OrderCancelled and
    OrderShipped for one order, so this is a guard, not the rule that keeps it to one."""
    return all(n.kind is not NotificationKind.ORDER_CANCELLED for n in sent)


def order_cancelled(
    order_id: str, customer_id: str, reason: str, channel: Channel, *, charged: bool = False
) -> Notification:
    """``charged``: the order service saw the payment taken (``OrderCancelled.charged``). Only
    then is a refund mentioned; it is a required compensation, so it is owed and under way,
    whatever the reason. A cancellation before any charge never mentions money back."""
    why = _CANCELLATION_TEXT.get(reason, "of a problem processing it")
    message = f"Your order {order_id} was cancelled because {why}."
    if charged:
        message += " The amount charged is being refunded to you in full."
    kind = NotificationKind.ORDER_CANCELLED
    return Notification(
        notification_id_for(order_id, kind), order_id, customer_id, kind, channel, message
    )
