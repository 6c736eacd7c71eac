"""Proto ⇄ domain for the order service: the gRPC messages, the events it emits, the enums."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from services.order.domain import (
    CancellationReason,
    Order,
    OrderStatus,
    PlaceOrder,
    PlaceOrderLine,
)
from services.values import Address, Line, Money, minor_to_decimal
from shop.common.v1 import address_pb2, money_pb2, order_line_pb2
from shop.common.v2 import money_pb2 as money_v2_pb2
from shop.order.v1 import events_pb2, order_service_pb2
from shop.order.v2 import events_pb2 as events_v2_pb2

_STATUS_TO_PROTO: dict[OrderStatus, order_service_pb2.OrderStatus.ValueType] = {
    OrderStatus.PENDING: order_service_pb2.ORDER_STATUS_PENDING,
    OrderStatus.CONFIRMED: order_service_pb2.ORDER_STATUS_CONFIRMED,
    OrderStatus.SHIPPED: order_service_pb2.ORDER_STATUS_SHIPPED,
    OrderStatus.CANCELLED: order_service_pb2.ORDER_STATUS_CANCELLED,
}
_STATUS_FROM_PROTO: dict[int, OrderStatus] = {
    int(value): status for status, value in _STATUS_TO_PROTO.items()
}

_REASON_TO_PROTO: dict[CancellationReason, events_pb2.CancellationReason.ValueType] = {
    CancellationReason.INVENTORY_UNAVAILABLE: events_pb2.CANCELLATION_REASON_INVENTORY_UNAVAILABLE,
    CancellationReason.PAYMENT_FAILED: events_pb2.CANCELLATION_REASON_PAYMENT_FAILED,
    CancellationReason.SHIPPING_FAILED: events_pb2.CANCELLATION_REASON_SHIPPING_FAILED,
    CancellationReason.DEADLINE_EXCEEDED: events_pb2.CANCELLATION_REASON_DEADLINE_EXCEEDED,
}


def status_to_proto(status: OrderStatus) -> order_service_pb2.OrderStatus.ValueType:
    return _STATUS_TO_PROTO[status]


def status_from_proto(value: int) -> OrderStatus | None:
    """None for UNSPECIFIED and for numbers this version of the contract does not know."""
    return _STATUS_FROM_PROTO.get(value)


def reason_to_proto(reason: CancellationReason | None) -> events_pb2.CancellationReason.ValueType:
    if reason is None:
        return events_pb2.CANCELLATION_REASON_UNSPECIFIED
    return _REASON_TO_PROTO[reason]


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def money_to_proto(money: Money) -> money_pb2.Money:
    return money_pb2.Money(amount_minor=money.amount_minor, currency_code=money.currency)


def line_to_proto(line: Line) -> order_line_pb2.OrderLine:
    return order_line_pb2.OrderLine(
        sku=line.sku, quantity=line.quantity, unit_price=money_to_proto(line.unit_price)
    )


def address_to_proto(address: Address) -> address_pb2.Address:
    return address_pb2.Address(
        recipient_name=address.recipient_name,
        line1=address.line1,
        line2=address.line2,
        city=address.city,
        postal_code=address.postal_code,
        country_code=address.country_code,
    )


def address_from_proto(address: address_pb2.Address) -> Address:
    return Address(
        recipient_name=address.recipient_name,
        line1=address.line1,
        line2=address.line2,
        city=address.city,
        postal_code=address.postal_code,
        country_code=address.country_code,
    )


def order_to_proto(order: Order) -> order_service_pb2.Order:
    return order_service_pb2.Order(
        order_id=order.order_id,
        customer_id=order.customer_id,
        lines=[line_to_proto(line) for line in order.lines],
        total=money_to_proto(order.total),
        status=status_to_proto(order.status),
        cancellation_reason=reason_to_proto(order.cancellation_reason),
        cancellation_detail=order.cancellation_detail,
        customer_notified=order.customer_notified,
        payment_id=order.payment_id,
        shipment_id=order.shipment_id,
        tracking_id=order.tracking_id,
        correlation_id=order.correlation_id,
        created_at=timestamp(order.created_at),
        updated_at=timestamp(order.updated_at),
    )


def place_order_from_proto(request: order_service_pb2.PlaceOrderRequest) -> PlaceOrder:
    """The client's request as plain data. Unit prices sent by the client are ignored: the
    catalog prices every line, so a client cannot choose what it pays."""
    return PlaceOrder(
        idempotency_key=request.idempotency_key,
        customer_id=request.customer_id,
        lines=tuple(PlaceOrderLine(line.sku, line.quantity) for line in request.lines),
        currency_code=request.currency_code,
        shipping_address=(
            address_from_proto(request.shipping_address)
            if request.HasField("shipping_address")
            else None
        ),
        payment_token=request.payment_token,
    )


def order_created(order: Order, payment_token: str) -> events_pb2.OrderCreated:
    """The event that starts the saga; the token is not stored, it travels only in the event."""
    return events_pb2.OrderCreated(
        order_id=order.order_id,
        customer_id=order.customer_id,
        lines=[line_to_proto(line) for line in order.lines],
        total=money_to_proto(order.total),
        shipping_address=address_to_proto(order.shipping_address),
        payment_token=payment_token,
        placed_at=timestamp(order.created_at),
    )


def money_v2(money: money_pb2.Money) -> money_v2_pb2.Money:
    units, nanos = minor_to_decimal(money.amount_minor, money.currency_code)
    return money_v2_pb2.Money(currency_code=money.currency_code, units=units, nanos=nanos)


def order_created_v2(v1: events_pb2.OrderCreated) -> events_v2_pb2.OrderCreated:
    """The same fact in the v2 shape (amounts as exact decimals, line totals stated); built
    from the v1 event so both versions always say the same."""
    lines = [
        events_v2_pb2.OrderedLine(
            sku=line.sku,
            quantity=line.quantity,
            unit_price=money_v2(line.unit_price),
            line_total=money_v2(
                money_pb2.Money(
                    amount_minor=line.unit_price.amount_minor * line.quantity,
                    currency_code=line.unit_price.currency_code,
                )
            ),
        )
        for line in v1.lines
    ]
    return events_v2_pb2.OrderCreated(
        order_id=v1.order_id,
        customer_id=v1.customer_id,
        lines=lines,
        total=money_v2(v1.total),
        shipping_address=v1.shipping_address,
        payment_token=v1.payment_token,
        placed_at=v1.placed_at,
    )


def order_created_versions(v1: events_pb2.OrderCreated, versions: tuple[int, ...]) -> list[Message]:
    """The OrderCreated events to publish, one per schema version asked for, oldest first."""
    shapes: dict[int, Message] = {1: v1, 2: order_created_v2(v1)} if 2 in versions else {1: v1}
    return [shapes[version] for version in versions]


def order_confirmed(order: Order) -> events_pb2.OrderConfirmed:
    return events_pb2.OrderConfirmed(order_id=order.order_id, payment_id=order.payment_id)


def order_shipped(order: Order, carrier: str = "") -> events_pb2.OrderShipped:
    """``carrier``: from the ShipmentCreated that shipped the order (the order does not keep
    it); the notification service tells the customer from this event, not from shipping's."""
    return events_pb2.OrderShipped(
        order_id=order.order_id,
        shipment_id=order.shipment_id,
        tracking_id=order.tracking_id,
        customer_id=order.customer_id,
        carrier=carrier,
    )


def order_cancelled(order: Order) -> events_pb2.OrderCancelled:
    return events_pb2.OrderCancelled(
        order_id=order.order_id,
        customer_id=order.customer_id,
        reason=reason_to_proto(order.cancellation_reason),
        detail=order.cancellation_detail,
    )
