"""The order: PlaceOrder validation and the order state machine.

PENDING -> CONFIRMED -> SHIPPED, or CANCELLED from PENDING or CONFIRMED. Events arrive at least
once and not always in order, so every transition is total: a duplicate or a late event is a
no-op, never an error. A paid order publishes OrderConfirmed before OrderShipped or
OrderCancelled even when the shipment's outcome overtakes the payment's: the order confirms
first, then moves on, in one transition.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from services.catalog import Catalog
from services.values import Address, Line, Money, is_country_code, total_of


class OrderStatus(enum.StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    SHIPPED = "SHIPPED"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        return self in (OrderStatus.SHIPPED, OrderStatus.CANCELLED)


class CancellationReason(enum.StrEnum):
    INVENTORY_UNAVAILABLE = "INVENTORY_UNAVAILABLE"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    SHIPPING_FAILED = "SHIPPING_FAILED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"


# --- PlaceOrder: the request as plain data, and its validation ---

MAX_KEY_LENGTH = 128
MAX_LINES = 100
MAX_QUANTITY = 1000
REQUIRED_ADDRESS_FIELDS = ("recipient_name", "line1", "city", "postal_code", "country_code")


@dataclass(frozen=True, slots=True)
class PlaceOrderLine:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    """What the client asked for; prices are not part of it, they come from the catalog."""

    idempotency_key: str
    customer_id: str
    lines: Sequence[PlaceOrderLine]
    currency_code: str
    shipping_address: Address | None
    payment_token: str


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """Named like google.rpc.BadRequest.FieldViolation: ``field`` is the proto path."""

    field: str
    description: str


def validate_place_order(request: PlaceOrder, catalog: Catalog) -> list[FieldViolation]:
    """Every rule broken by the request, so a client can fix them all in one round trip."""
    v: list[FieldViolation] = []
    key = request.idempotency_key
    if not key.strip():
        v.append(FieldViolation("idempotency_key", "is required"))
    elif len(key) > MAX_KEY_LENGTH:
        v.append(FieldViolation("idempotency_key", f"must be at most {MAX_KEY_LENGTH} characters"))
    if not request.customer_id.strip():
        v.append(FieldViolation("customer_id", "is required"))
    v += _line_violations(request.lines, catalog)
    v += _currency_violations(request.currency_code, catalog)
    v += _address_violations(request.shipping_address)
    if not request.payment_token.strip():
        v.append(FieldViolation("payment_token", "is required"))
    return v


def _line_violations(lines: Sequence[PlaceOrderLine], catalog: Catalog) -> list[FieldViolation]:
    if not lines:
        return [FieldViolation("lines", "at least one line is required")]
    if len(lines) > MAX_LINES:
        return [FieldViolation("lines", f"at most {MAX_LINES} lines are allowed")]
    v: list[FieldViolation] = []
    for i, line in enumerate(lines):
        if not line.sku.strip():
            v.append(FieldViolation(f"lines[{i}].sku", "is required"))
        elif line.sku not in catalog.products:
            v.append(FieldViolation(f"lines[{i}].sku", f"unknown sku {line.sku!r}"))
        if not 1 <= line.quantity <= MAX_QUANTITY:
            v.append(
                FieldViolation(f"lines[{i}].quantity", f"must be between 1 and {MAX_QUANTITY}")
            )
    if not v:
        try:
            price_lines(lines, catalog)
        except OverflowError:
            v.append(FieldViolation("lines", "order total is too large"))
    return v


def _currency_violations(code: str, catalog: Catalog) -> list[FieldViolation]:
    # One message for every wrong code, naming the only one accepted: listing every ISO code we
    # know would offer currencies that the catalog then refuses.
    if code != catalog.currency:
        return [
            FieldViolation(
                "currency_code",
                f"must be {catalog.currency}: the catalog prices every product in"
                f" {catalog.currency} only",
            )
        ]
    return []


def _address_violations(address: Address | None) -> list[FieldViolation]:
    if address is None:
        return [FieldViolation("shipping_address", "is required")]
    v = [
        FieldViolation(f"shipping_address.{name}", "is required")
        for name in REQUIRED_ADDRESS_FIELDS
        if not getattr(address, name).strip()
    ]
    code = address.country_code
    if code.strip() and not is_country_code(code):
        v.append(
            FieldViolation(
                "shipping_address.country_code", "must be 2 uppercase letters (ISO 3166-1)"
            )
        )
    return v


def price_lines(lines: Sequence[PlaceOrderLine], catalog: Catalog) -> tuple[Line, ...]:
    """Lines at catalog prices; raises OverflowError when the total leaves 64 bits."""
    priced = tuple(
        Line(line.sku, line.quantity, catalog.products[line.sku].unit_price) for line in lines
    )
    total_of(priced, catalog.currency)
    return priced


def fingerprint(request: PlaceOrder) -> str:
    """A stable hash of what was asked (the key itself excluded), to tell a retry from a reuse."""
    address = request.shipping_address
    normalized = {
        "customer_id": request.customer_id,
        "lines": [[line.sku, line.quantity] for line in request.lines],
        "currency_code": request.currency_code,
        "shipping_address": address.as_dict() if address else None,
        "payment_token": request.payment_token,
    }
    canonical = json.dumps(normalized, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- the order and its state machine ---


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    idempotency_key: str
    request_fingerprint: str
    customer_id: str
    status: OrderStatus
    lines: tuple[Line, ...]
    total: Money
    shipping_address: Address
    created_at: datetime
    updated_at: datetime
    correlation_id: str = ""
    cancellation_reason: CancellationReason | None = None
    cancellation_detail: str = ""
    customer_notified: bool = False
    payment_id: str = ""
    shipment_id: str = ""
    tracking_id: str = ""


@dataclass(frozen=True, slots=True)
class Created:
    pass


@dataclass(frozen=True, slots=True)
class Replayed:
    """Same key, same request: answer with the order already placed."""

    order: Order


@dataclass(frozen=True, slots=True)
class KeyReused:
    """Same key, different request: refused, naming the order the key belongs to."""

    order: Order

    @property
    def violation(self) -> FieldViolation:
        order_id = self.order.order_id
        return FieldViolation(
            "idempotency_key", f"was already used for a different request (order {order_id})"
        )


def decide_place_order(
    existing: Order | None, request_fingerprint: str
) -> Created | Replayed | KeyReused:
    if existing is None:
        return Created()
    if existing.request_fingerprint == request_fingerprint:
        return Replayed(existing)
    return KeyReused(existing)


def new_order(
    order_id: str, request: PlaceOrder, catalog: Catalog, at: datetime, correlation_id: str = ""
) -> Order:
    """A PENDING order from a validated request (see ``validate_place_order``)."""
    if request.shipping_address is None:
        raise ValueError("validate the request before creating the order")
    lines = price_lines(request.lines, catalog)
    return Order(
        order_id,
        request.idempotency_key,
        fingerprint(request),
        request.customer_id,
        OrderStatus.PENDING,
        lines,
        total_of(lines, catalog.currency),
        request.shipping_address,
        created_at=at,
        updated_at=at,
        correlation_id=correlation_id or order_id,
    )


@dataclass(frozen=True, slots=True)
class Transition:
    """The order after an event, and the statuses it entered on the way, in order.

    Each entered status publishes its event (CONFIRMED: OrderConfirmed, SHIPPED: OrderShipped,
    CANCELLED: OrderCancelled), in this order, so the order's event versions follow its path.
    """

    order: Order
    changed: bool
    entered: tuple[OrderStatus, ...] = ()
    why: str = ""

    @property
    def emit(self) -> bool:
        """A status-change event must be published."""
        return bool(self.entered)


def _moved(order: Order, *entered: OrderStatus) -> Transition:
    return Transition(order, changed=True, entered=entered or (order.status,))


def _unchanged(order: Order, why: str) -> Transition:
    return Transition(order, changed=False, why=why)


def confirm(order: Order, payment_id: str, at: datetime) -> Transition:
    """PaymentCompleted: PENDING -> CONFIRMED.

    Once the order has confirmed (a shipment's outcome that overtook this event confirmed it
    first) or ended, a late PaymentCompleted changes nothing: OrderConfirmed is published
    exactly once per paid order.
    """
    if order.status is OrderStatus.PENDING:
        return _moved(
            replace(order, status=OrderStatus.CONFIRMED, payment_id=payment_id, updated_at=at)
        )
    if order.status is OrderStatus.SHIPPED and not order.payment_id:
        # Confirmed by a ShipmentCreated that did not carry the payment id (a shipping service
        # older than that field): keep the id now, the status stays.
        return Transition(replace(order, payment_id=payment_id, updated_at=at), changed=True)
    return _unchanged(order, f"payment completed while {order.status}: nothing to confirm")


def ship(
    order: Order, shipment_id: str, tracking_id: str, at: datetime, *, payment_id: str = ""
) -> Transition:
    """ShipmentCreated: CONFIRMED -> SHIPPED.

    A shipment is booked only for a paid order, so when it overtakes PaymentCompleted the
    order confirms first (with the payment id the shipment carries), then ships: it publishes
    OrderConfirmed, then OrderShipped, and the late PaymentCompleted is a no-op.
    """
    if order.status.is_final:
        return _unchanged(order, f"shipment created while {order.status}")
    shipped = replace(
        order,
        status=OrderStatus.SHIPPED,
        payment_id=order.payment_id or payment_id,
        shipment_id=shipment_id,
        tracking_id=tracking_id,
        updated_at=at,
    )
    if order.status is OrderStatus.PENDING:
        return _moved(shipped, OrderStatus.CONFIRMED, OrderStatus.SHIPPED)
    return _moved(shipped)


def cancel(
    order: Order, reason: CancellationReason, detail: str, at: datetime, *, payment_id: str = ""
) -> Transition:
    """A failure event: PENDING or CONFIRMED -> CANCELLED; a shipped order stays shipped.

    ``payment_id`` names a payment the failed step saw completed (ShippingFailed). When that
    failure overtakes PaymentCompleted, the order was paid all the same: it confirms first, then
    cancels (OrderConfirmed, then OrderCancelled), and payment refunds it.
    """
    if order.status.is_final:
        return _unchanged(order, f"{reason} while {order.status}: already final")
    cancelled = replace(
        order,
        status=OrderStatus.CANCELLED,
        payment_id=order.payment_id or payment_id,
        cancellation_reason=reason,
        cancellation_detail=detail,
        updated_at=at,
    )
    if order.status is OrderStatus.PENDING and payment_id:
        return _moved(cancelled, OrderStatus.CONFIRMED, OrderStatus.CANCELLED)
    return _moved(cancelled)


def overdue(order: Order, now: datetime, deadline_s: float) -> bool:
    """Not final, and placed longer than the saga deadline ago."""
    return not order.status.is_final and (now - order.created_at).total_seconds() >= deadline_s


def expire(order: Order, now: datetime, deadline_s: float) -> Transition:
    """The saga deadline: an order that is not final in time is cancelled; the steps undo
    their own work on the OrderCancelled (and a late event of theirs changes nothing here)."""
    if not overdue(order, now, deadline_s):
        return _unchanged(order, f"{order.status}, not overdue")
    detail = (
        f"the order was still {order.status} {deadline_s:g}s after it was placed (saga deadline)"
    )
    return cancel(order, CancellationReason.DEADLINE_EXCEEDED, detail, now)


def mark_notified(order: Order, at: datetime) -> Transition:
    """NotificationSent: recorded even if the final status event has not reached us yet."""
    if order.customer_notified:
        return _unchanged(order, "customer already notified")
    return Transition(replace(order, customer_notified=True, updated_at=at), changed=True)


def as_of(order: Order, status: OrderStatus, at: datetime) -> Order:
    """The order as it was when it entered an earlier ``status`` (from its history).

    A watcher that polls more slowly than the saga moves still gets one update per status;
    fields that only later steps fill in are blanked so the update does not claim them early.
    """
    if status is order.status:
        return order
    earlier = replace(
        order,
        status=status,
        updated_at=at,
        customer_notified=False,
        cancellation_reason=None,
        cancellation_detail="",
        shipment_id="",
        tracking_id="",
    )
    return replace(earlier, payment_id="") if status is OrderStatus.PENDING else earlier
