"""Payment decisions: record the gateway's answer to a charge, and refund a charge exactly once.

The gateway is an external system with its own ledger, so the answers it gives are facts to
record, not decisions to remake. What this module decides is *whether* to call it: a charge
once per order, a refund only for a completed charge and only once.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, replace

from services.values import Money


class PaymentStatus(enum.StrEnum):
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    REFUNDED = "REFUNDED"


class ChargeStatus(enum.StrEnum):
    """Where an approved charge stands at the gateway now, as a real provider reports it: a
    charge found again by its idempotency key may have been given back since it was taken."""

    CAPTURED = "CAPTURED"
    VOIDED = "VOIDED"  # its key was voided (a give-up or a cancellation): refunded by the void
    REFUNDED = "REFUNDED"


class DeclineReason(enum.StrEnum):
    PAYMENT_DECLINED = "PAYMENT_DECLINED"
    CREDIT_LIMIT_EXCEEDED = "CREDIT_LIMIT_EXCEEDED"
    CURRENCY_NOT_SUPPORTED = "CURRENCY_NOT_SUPPORTED"
    # The charge's idempotency key was voided first (the step gave up, or the order was
    # cancelled at its deadline): the gateway refuses it, so a late attempt takes no money.
    VOIDED = "VOIDED"


# What a payment row records when the step never got the gateway's answer and gave up, or the
# order was cancelled at its deadline before it was charged: the charge key is voided.
GAVE_UP = "GATEWAY_UNAVAILABLE"
ORDER_CANCELLED = "ORDER_CANCELLED"
# What a payment row records when the gateway, asked again (a retry or an operator's replay),
# answers that the charge under the key was since voided or refunded: nothing is kept.
CHARGE_GIVEN_BACK = "CHARGE_GIVEN_BACK"


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """The gateway's answer to a charge; a declined charge still has an id in its ledger."""

    charge_id: str
    approved: bool
    amount: Money
    decline_reason: DeclineReason | None = None
    # The charge's current status (approved charges only), and the refund that gave it back.
    status: ChargeStatus = ChargeStatus.CAPTURED
    refund_id: str = ""

    @property
    def kept(self) -> bool:
        """The gateway holds the money now: approved and neither voided nor refunded."""
        return self.approved and self.status is ChargeStatus.CAPTURED


@dataclass(frozen=True, slots=True)
class RefundResult:
    refund_id: str
    charge_id: str
    amount: Money


@dataclass(frozen=True, slots=True)
class VoidResult:
    """The gateway's answer to voiding a charge key: what it had taken under it (if anything)
    and the refund that gave it back. Empty ids: nothing was taken."""

    charge_id: str = ""
    refund_id: str = ""
    amount: Money | None = None


@dataclass(frozen=True, slots=True)
class Payment:
    order_id: str
    payment_id: str
    customer_id: str
    amount: Money
    status: PaymentStatus
    charge_id: str = ""
    failure_reason: str = ""
    refund_id: str = ""


@dataclass(frozen=True, slots=True)
class RefundDue:
    payment: Payment
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class NoRefund:
    why: str


_PAYMENT_NAMESPACE = uuid.UUID("0d7c4b51-55b5-4a8e-8f4f-7f0e2f6a3c21")


def payment_id_for(order_id: str) -> str:
    return str(uuid.uuid5(_PAYMENT_NAMESPACE, order_id))


# Keys derive from the order alone: a handler that crashed after the gateway call and before
# its commit calls again with the same key and gets the first answer, not a second charge.
def charge_key(order_id: str) -> str:
    return f"charge:{order_id}"


def refund_key(order_id: str) -> str:
    return f"refund:{order_id}"


def should_charge(existing: Payment | None) -> bool:
    """Charge once per order; a payment already recorded (any status) is the answer."""
    return existing is None


def decide_charge(order_id: str, customer_id: str, amount: Money, result: ChargeResult) -> Payment:
    """The payment the gateway's answer makes. An approved charge that was since voided or
    refunded (found again by its key after a give-up whose answer was lost, e.g. on an
    operator's replay) is a failed payment, never a completed one: the money is not kept."""
    if result.approved and not result.kept:
        return Payment(
            order_id,
            payment_id_for(order_id),
            customer_id,
            amount,
            PaymentStatus.FAILED,
            charge_id=result.charge_id,
            failure_reason=CHARGE_GIVEN_BACK,
            refund_id=result.refund_id,
        )
    if result.approved:
        return Payment(
            order_id,
            payment_id_for(order_id),
            customer_id,
            amount,
            PaymentStatus.COMPLETED,
            charge_id=result.charge_id,
        )
    reason = result.decline_reason or DeclineReason.PAYMENT_DECLINED
    return Payment(
        order_id,
        payment_id_for(order_id),
        customer_id,
        amount,
        PaymentStatus.FAILED,
        charge_id=result.charge_id,
        failure_reason=reason.value,
    )


def decide_refund(payment: Payment | None) -> RefundDue | NoRefund:
    if payment is None:
        return NoRefund("order was never charged")
    if payment.status is PaymentStatus.FAILED:
        return NoRefund("charge was declined, nothing to give back")
    if payment.status is PaymentStatus.REFUNDED:
        return NoRefund(f"already refunded ({payment.refund_id})")
    return RefundDue(payment, refund_key(payment.order_id))


def refunded(payment: Payment, result: RefundResult) -> Payment:
    return replace(payment, status=PaymentStatus.REFUNDED, refund_id=result.refund_id)


def voided(order_id: str, customer_id: str, amount: Money, result: VoidResult, why: str) -> Payment:
    """The payment of an order whose charge key was voided: FAILED, nothing kept. The charge
    and refund ids say whether money was taken and given back."""
    return Payment(
        order_id,
        payment_id_for(order_id),
        customer_id,
        result.amount or amount,
        PaymentStatus.FAILED,
        charge_id=result.charge_id,
        failure_reason=why,
        refund_id=result.refund_id,
    )


@dataclass(frozen=True, slots=True)
class VoidDue:
    """No answer recorded yet: void the charge key, so a charge in flight takes nothing."""

    idempotency_key: str


DEADLINE_CANCELLATION = "CANCELLATION_REASON_DEADLINE_EXCEEDED"


def compensates_cancellation(reason: str) -> bool:
    """Only a cancellation at the saga deadline is payment's to undo: for the other reasons
    the failure event that caused it (PaymentFailed, ShippingFailed) already is."""
    return reason == DEADLINE_CANCELLATION


def decide_cancellation(order_id: str, payment: Payment | None) -> VoidDue | RefundDue | NoRefund:
    """An order cancelled at its deadline: void an unanswered charge (one may be in flight),
    refund a completed one, leave a failed or refunded one alone."""
    if payment is None:
        return VoidDue(charge_key(order_id))
    return decide_refund(payment)
