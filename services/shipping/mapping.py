"""Proto ⇄ domain for shipping: addresses and the Shipment read model."""

from __future__ import annotations

from services.shipping import domain
from services.values import Address
from shop.common.v1 import address_pb2
from shop.shipping.v1 import events_pb2, shipping_service_pb2

STATUSES = {
    domain.ShipmentStatus.BOOKED: shipping_service_pb2.SHIPMENT_STATUS_CREATED,
    domain.ShipmentStatus.FAILED: shipping_service_pb2.SHIPMENT_STATUS_FAILED,
    # The contract has no CANCELLED status: a booking cancelled at the carrier ships nothing,
    # which to a reader is a failed shipment; ``failure_detail`` says it was cancelled.
    domain.ShipmentStatus.CANCELLED: shipping_service_pb2.SHIPMENT_STATUS_FAILED,
}


def address_from_proto(value: address_pb2.Address) -> Address:
    return Address(
        recipient_name=value.recipient_name,
        line1=value.line1,
        line2=value.line2,
        city=value.city,
        postal_code=value.postal_code,
        country_code=value.country_code,
    )


def address_to_proto(value: Address) -> address_pb2.Address:
    return address_pb2.Address(
        recipient_name=value.recipient_name,
        line1=value.line1,
        line2=value.line2,
        city=value.city,
        postal_code=value.postal_code,
        country_code=value.country_code,
    )


def failure_reason(shipment: domain.Shipment) -> events_pb2.ShippingFailureReason.ValueType:
    # The provider refuses only for the destination; outages are retried, never recorded.
    if shipment.status is domain.ShipmentStatus.FAILED:
        return events_pb2.SHIPPING_FAILURE_REASON_UNSERVICEABLE_DESTINATION
    return events_pb2.SHIPPING_FAILURE_REASON_UNSPECIFIED


def shipment_to_proto(shipment: domain.Shipment) -> shipping_service_pb2.Shipment:
    return shipping_service_pb2.Shipment(
        shipment_id=shipment.shipment_id,
        order_id=shipment.order_id,
        tracking_id=shipment.tracking_id,
        carrier=shipment.carrier,
        destination=address_to_proto(shipment.destination),
        status=STATUSES[shipment.status],
        failure_reason=failure_reason(shipment),
        failure_detail=shipment.failure_reason,
    )
