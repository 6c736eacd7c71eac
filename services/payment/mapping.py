"""Proto ⇄ domain for payment: Money in and out, decline reasons, the Payment read model."""

from __future__ import annotations

from choreo.errors import PermanentError
from services.payment import domain
from services.values import Money
from shop.common.v1 import money_pb2
from shop.payment.v1 import events_pb2, payment_service_pb2

FAILURE_REASONS = {
    domain.DeclineReason.CREDIT_LIMIT_EXCEEDED.value: (
        events_pb2.PAYMENT_FAILURE_REASON_CREDIT_LIMIT_EXCEEDED
    ),
    domain.DeclineReason.PAYMENT_DECLINED.value: events_pb2.PAYMENT_FAILURE_REASON_PAYMENT_DECLINED,
    # The contract has no separate reason for it; to the customer it is a declined payment.
    domain.DeclineReason.CURRENCY_NOT_SUPPORTED.value: (
        events_pb2.PAYMENT_FAILURE_REASON_PAYMENT_DECLINED
    ),
    # The charge key was voided (a step gave up) before or after the charge: what failed is
    # the gateway's answer reaching us, as for the give-up itself.
    domain.DeclineReason.VOIDED.value: events_pb2.PAYMENT_FAILURE_REASON_GATEWAY_UNAVAILABLE,
    domain.CHARGE_GIVEN_BACK: events_pb2.PAYMENT_FAILURE_REASON_GATEWAY_UNAVAILABLE,
}

_DETAILS = {
    domain.DeclineReason.CREDIT_LIMIT_EXCEEDED.value: "the charge would exceed the credit limit",
    domain.DeclineReason.PAYMENT_DECLINED.value: "the card issuer declined the payment token",
    domain.DeclineReason.CURRENCY_NOT_SUPPORTED.value: "the gateway does not accept the currency",
    domain.DeclineReason.VOIDED.value: "its charge key was voided first (a step gave up)",
    domain.CHARGE_GIVEN_BACK: "the charge was since voided or refunded, nothing is kept",
}

STATUSES = {
    domain.PaymentStatus.COMPLETED: payment_service_pb2.PAYMENT_STATUS_COMPLETED,
    domain.PaymentStatus.FAILED: payment_service_pb2.PAYMENT_STATUS_FAILED,
    domain.PaymentStatus.REFUNDED: payment_service_pb2.PAYMENT_STATUS_REFUNDED,
}


def money_from_proto(value: money_pb2.Money, what: str) -> Money:
    """A bad amount in an event cannot get better by retrying: it is dead-lettered."""
    try:
        return Money(value.amount_minor, value.currency_code)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PermanentError(f"{what}: {exc}") from exc


def money_to_proto(value: Money) -> money_pb2.Money:
    return money_pb2.Money(amount_minor=value.amount_minor, currency_code=value.currency)


def failure_reason(payment: domain.Payment) -> events_pb2.PaymentFailureReason.ValueType:
    return FAILURE_REASONS.get(
        payment.failure_reason, events_pb2.PAYMENT_FAILURE_REASON_UNSPECIFIED
    )


def failure_detail(payment: domain.Payment) -> str:
    if payment.status is not domain.PaymentStatus.FAILED:
        return ""
    why = _DETAILS.get(payment.failure_reason, payment.failure_reason.lower())
    return f"charge of {payment.amount} for customer {payment.customer_id} declined: {why}"


def payment_to_proto(payment: domain.Payment) -> payment_service_pb2.Payment:
    return payment_service_pb2.Payment(
        payment_id=payment.payment_id,
        order_id=payment.order_id,
        customer_id=payment.customer_id,
        amount=money_to_proto(payment.amount),
        status=STATUSES[payment.status],
        failure_reason=failure_reason(payment),
        failure_detail=failure_detail(payment),
        refund_id=payment.refund_id,
    )
