"""Order: PlaceOrder validation (one test per rule), idempotency, the state machine, the store."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.catalog import Catalog
from services.order import store
from services.order.domain import (
    CancellationReason,
    Created,
    FieldViolation,
    KeyReused,
    Order,
    OrderStatus,
    PlaceOrder,
    PlaceOrderLine,
    Replayed,
    Transition,
    cancel,
    confirm,
    decide_place_order,
    fingerprint,
    mark_notified,
    new_order,
    ship,
    validate_place_order,
)
from services.order.handlers import saga_outcome
from services.values import Address, Money
from tests.domain.conftest import SqliteTx

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOME = Address("Ada Lovelace", "1 Main St", "Springfield", "12345", "US")
VALID = PlaceOrder(
    idempotency_key="key-1",
    customer_id="cust-alice",
    lines=(PlaceOrderLine("SKU-MUG", 2), PlaceOrderLine("SKU-PEN", 3)),
    currency_code="USD",
    shipping_address=HOME,
    payment_token="tok_visa",
)


def fields(request: PlaceOrder, catalog: Catalog) -> list[str]:
    return [v.field for v in validate_place_order(request, catalog)]


# --- validation: one rule per test ---


def test_a_valid_request_has_no_violations(catalog: Catalog) -> None:
    assert validate_place_order(VALID, catalog) == []


def test_idempotency_key_is_required(catalog: Catalog) -> None:
    assert fields(replace(VALID, idempotency_key=" "), catalog) == ["idempotency_key"]


def test_idempotency_key_is_at_most_128_characters(catalog: Catalog) -> None:
    assert fields(replace(VALID, idempotency_key="k" * 128), catalog) == []
    assert fields(replace(VALID, idempotency_key="k" * 129), catalog) == ["idempotency_key"]


def test_customer_id_is_required(catalog: Catalog) -> None:
    assert fields(replace(VALID, customer_id=""), catalog) == ["customer_id"]


def test_at_least_one_line_is_required(catalog: Catalog) -> None:
    assert fields(replace(VALID, lines=()), catalog) == ["lines"]


def test_at_most_100_lines_are_allowed(catalog: Catalog) -> None:
    assert fields(replace(VALID, lines=(PlaceOrderLine("SKU-PEN", 1),) * 100), catalog) == []
    assert fields(replace(VALID, lines=(PlaceOrderLine("SKU-PEN", 1),) * 101), catalog) == ["lines"]


def test_sku_must_exist_in_the_catalog(catalog: Catalog) -> None:
    request = replace(VALID, lines=(PlaceOrderLine("SKU-MUG", 1), PlaceOrderLine("NOPE", 1)))
    assert validate_place_order(request, catalog) == [
        FieldViolation("lines[1].sku", "unknown sku 'NOPE'")
    ]


def test_sku_is_required(catalog: Catalog) -> None:
    assert fields(replace(VALID, lines=(PlaceOrderLine("", 1),)), catalog) == ["lines[0].sku"]


@pytest.mark.parametrize("quantity", [0, -1, 1001])
def test_quantity_is_between_1_and_1000(catalog: Catalog, quantity: int) -> None:
    request = replace(VALID, lines=(PlaceOrderLine("SKU-MUG", quantity),))
    assert fields(request, catalog) == ["lines[0].quantity"]


def test_quantity_bounds_are_inclusive(catalog: Catalog) -> None:
    for quantity in (1, 1000):
        assert fields(replace(VALID, lines=(PlaceOrderLine("SKU-MUG", quantity),)), catalog) == []


@pytest.mark.parametrize("code", ["usd", "US", "XYZ", "", "EUR", "JPY"])
def test_currency_code_must_be_the_catalog_currency_and_the_error_offers_only_it(
    catalog: Catalog, code: str
) -> None:
    """The error names the one accepted currency, never one that would be refused next."""
    violations = validate_place_order(replace(VALID, currency_code=code), catalog)
    assert violations == [
        FieldViolation("currency_code", "must be USD: the catalog prices every product in USD only")
    ]


def test_shipping_address_is_required(catalog: Catalog) -> None:
    assert fields(replace(VALID, shipping_address=None), catalog) == ["shipping_address"]


@pytest.mark.parametrize("name", ["recipient_name", "line1", "city", "postal_code", "country_code"])
def test_each_required_address_field_is_named_by_its_proto_path(
    catalog: Catalog, name: str
) -> None:
    request = replace(VALID, shipping_address=replace(HOME, **{name: ""}))
    assert fields(request, catalog) == [f"shipping_address.{name}"]


@pytest.mark.parametrize("code", ["us", "USA", "U1"])
def test_country_code_is_two_uppercase_letters(catalog: Catalog, code: str) -> None:
    request = replace(VALID, shipping_address=replace(HOME, country_code=code))
    assert fields(request, catalog) == ["shipping_address.country_code"]


def test_payment_token_is_required(catalog: Catalog) -> None:
    assert fields(replace(VALID, payment_token=""), catalog) == ["payment_token"]


def test_every_broken_rule_is_reported_at_once(catalog: Catalog) -> None:
    request = PlaceOrder("", "", (PlaceOrderLine("NOPE", 0),), "EUR", None, "")
    assert fields(request, catalog) == [
        "idempotency_key", "customer_id", "lines[0].sku", "lines[0].quantity",
        "currency_code", "shipping_address", "payment_token",
    ]  # fmt: skip


def test_an_order_total_past_64_bits_is_refused(catalog: Catalog) -> None:
    huge = replace(catalog.products["SKU-MUG"], unit_price=Money(2**62, "USD"))
    rich = replace(catalog, products={**catalog.products, "SKU-MUG": huge})
    request = replace(VALID, lines=(PlaceOrderLine("SKU-MUG", 2),))
    assert fields(request, rich) == ["lines"]


def test_prices_come_from_the_catalog_and_the_total_adds_up(catalog: Catalog) -> None:
    order = new_order("o1", VALID, catalog, T0)
    assert [line.unit_price for line in order.lines] == [Money(1250, "USD"), Money(199, "USD")]
    assert order.total == Money(2 * 1250 + 3 * 199, "USD")
    assert (order.status, order.correlation_id) == (OrderStatus.PENDING, "o1")


# --- idempotency ---


def test_same_key_same_request_replays_the_order(catalog: Catalog) -> None:
    existing = new_order("o1", VALID, catalog, T0)
    assert decide_place_order(existing, fingerprint(VALID)) == Replayed(existing)


def test_same_key_different_request_is_refused(catalog: Catalog) -> None:
    existing = new_order("o1", VALID, catalog, T0)
    decision = decide_place_order(existing, fingerprint(replace(VALID, payment_token="tok_2")))
    assert isinstance(decision, KeyReused)
    assert decision.violation.field == "idempotency_key" and "o1" in decision.violation.description


def test_a_new_key_creates_an_order() -> None:
    assert decide_place_order(None, fingerprint(VALID)) == Created()


def test_the_fingerprint_ignores_the_key_but_not_the_content() -> None:
    assert fingerprint(VALID) == fingerprint(replace(VALID, idempotency_key="other"))
    assert fingerprint(VALID) != fingerprint(replace(VALID, lines=(PlaceOrderLine("SKU-MUG", 2),)))
    assert fingerprint(VALID) != fingerprint(replace(VALID, customer_id="cust-bob"))


# --- the state machine ---


@pytest.fixture
def pending(catalog: Catalog) -> Order:
    return new_order("o1", VALID, catalog, T0)


T1 = T0 + timedelta(seconds=1)


def test_payment_completed_confirms_a_pending_order(pending: Order) -> None:
    t = confirm(pending, "pay-1", T1)
    assert (t.order.status, t.order.payment_id, t.emit) == (OrderStatus.CONFIRMED, "pay-1", True)
    assert t.order.updated_at == T1


def test_shipment_created_ships_a_confirmed_order(pending: Order) -> None:
    t = ship(confirm(pending, "pay-1", T1).order, "shp-1", "UPS1", T1)
    assert (t.order.status, t.order.tracking_id, t.emit) == (OrderStatus.SHIPPED, "UPS1", True)


def test_payment_completed_enters_confirmed_only(pending: Order) -> None:
    assert confirm(pending, "pay-1", T1).entered == (OrderStatus.CONFIRMED,)


def test_shipment_created_ships_a_confirmed_order_without_confirming_again(pending: Order) -> None:
    confirmed = confirm(pending, "pay-1", T1).order
    assert ship(confirmed, "shp-1", "UPS1", T1, payment_id="pay-1").entered == (
        OrderStatus.SHIPPED,
    )


def test_a_shipment_that_overtakes_the_payment_confirms_then_ships(pending: Order) -> None:
    t = ship(pending, "shp-1", "UPS1", T1, payment_id="pay-1")
    assert t.entered == (OrderStatus.CONFIRMED, OrderStatus.SHIPPED)
    assert (t.order.status, t.order.payment_id, t.order.shipment_id) == (
        OrderStatus.SHIPPED, "pay-1", "shp-1",
    )  # fmt: skip
    late = confirm(t.order, "pay-1", T1)
    assert (late.changed, late.entered) == (False, ())


def test_a_shipment_without_a_payment_id_still_confirms_first_and_keeps_the_late_id(
    pending: Order,
) -> None:
    """A ShipmentCreated from a shipping service older than its payment_id field."""
    shipped = ship(pending, "shp-1", "UPS1", T1)
    assert shipped.entered == (OrderStatus.CONFIRMED, OrderStatus.SHIPPED)
    late = confirm(shipped.order, "pay-1", T1)
    assert (late.order.status, late.order.payment_id) == (OrderStatus.SHIPPED, "pay-1")
    assert late.changed and late.entered == ()


def test_a_shipping_failure_that_overtakes_the_payment_confirms_then_cancels(
    pending: Order,
) -> None:
    t = cancel(pending, CancellationReason.SHIPPING_FAILED, "AQ", T1, payment_id="pay-1")
    assert t.entered == (OrderStatus.CONFIRMED, OrderStatus.CANCELLED)
    assert (t.order.status, t.order.payment_id) == (OrderStatus.CANCELLED, "pay-1")
    assert not confirm(t.order, "pay-1", T1).changed


def test_a_shipping_failure_of_a_confirmed_order_cancels_without_confirming_again(
    pending: Order,
) -> None:
    confirmed = confirm(pending, "pay-1", T1).order
    t = cancel(confirmed, CancellationReason.SHIPPING_FAILED, "AQ", T1, payment_id="pay-1")
    assert t.entered == (OrderStatus.CANCELLED,)


def test_an_unpaid_failure_cancels_without_confirming(pending: Order) -> None:
    t = cancel(pending, CancellationReason.PAYMENT_FAILED, "declined", T1)
    assert (t.entered, t.order.payment_id) == ((OrderStatus.CANCELLED,), "")


@pytest.mark.parametrize("first", ["payment", "shipment"])
def test_every_delivery_order_publishes_confirmed_then_shipped_once(
    pending: Order, first: str
) -> None:
    """PaymentCompleted and ShipmentCreated in either order, each delivered twice."""

    def pay(order: Order) -> Transition:
        return confirm(order, "pay-1", T1)

    def book(order: Order) -> Transition:
        return ship(order, "shp-1", "UPS1", T1, payment_id="pay-1")

    steps = [pay, pay, book, book] if first == "payment" else [book, pay, book, pay]
    order, published = pending, list[OrderStatus]()
    for step in steps:
        t = step(order)
        order = t.order
        published.extend(t.entered)
    assert published == [OrderStatus.CONFIRMED, OrderStatus.SHIPPED]


def test_confirm_after_shipped_is_a_no_op(pending: Order) -> None:
    shipped = ship(confirm(pending, "pay-1", T1).order, "shp-1", "UPS1", T1).order
    t = confirm(shipped, "pay-1", T1)
    assert (t.order, t.changed, t.emit) == (shipped, False, False)


def test_a_duplicate_confirmation_or_shipment_is_a_no_op(pending: Order) -> None:
    confirmed = confirm(pending, "pay-1", T1).order
    assert not confirm(confirmed, "pay-1", T1).changed
    shipped = ship(confirmed, "shp-1", "UPS1", T1).order
    assert not ship(shipped, "shp-1", "UPS1", T1).changed


@pytest.mark.parametrize(
    "reason", [CancellationReason.INVENTORY_UNAVAILABLE, CancellationReason.PAYMENT_FAILED]
)
def test_a_failure_cancels_a_pending_order(pending: Order, reason: CancellationReason) -> None:
    t = cancel(pending, reason, "details", T1)
    assert (t.order.status, t.order.cancellation_reason, t.emit) == (
        OrderStatus.CANCELLED, reason, True,
    )  # fmt: skip


def test_shipping_failed_cancels_a_confirmed_order(pending: Order) -> None:
    confirmed = confirm(pending, "pay-1", T1).order
    t = cancel(confirmed, CancellationReason.SHIPPING_FAILED, "carrier refused AQ", T1)
    assert (t.order.status, t.order.cancellation_detail) == (
        OrderStatus.CANCELLED, "carrier refused AQ",
    )  # fmt: skip


def test_a_shipped_order_cannot_be_cancelled(pending: Order) -> None:
    shipped = ship(pending, "shp-1", "UPS1", T1).order
    t = cancel(shipped, CancellationReason.SHIPPING_FAILED, "late", T1)
    assert (t.order.status, t.changed, t.emit) == (OrderStatus.SHIPPED, False, False)


def test_a_cancelled_order_is_neither_cancelled_again_nor_confirmed_nor_shipped(
    pending: Order,
) -> None:
    cancelled = cancel(pending, CancellationReason.PAYMENT_FAILED, "declined", T1).order
    assert not cancel(cancelled, CancellationReason.SHIPPING_FAILED, "x", T1).changed
    assert not confirm(cancelled, "pay-1", T1).changed
    assert not ship(cancelled, "shp-1", "UPS1", T1).changed


def test_notification_sent_records_that_the_customer_was_told_once(pending: Order) -> None:
    t = mark_notified(pending, T1)
    assert (t.order.customer_notified, t.changed, t.emit) == (True, True, False)
    assert not mark_notified(t.order, T1).changed


# --- store ---


async def test_an_order_is_stored_read_back_and_found_by_its_key(
    tx: SqliteTx, pending: Order
) -> None:
    await tx.migrate(store.SCHEMA)
    assert await store.insert_order(tx, pending)
    assert await store.load_order(tx, "o1") == pending
    assert await store.load_order_by_key(tx, "key-1") == pending
    assert not await store.insert_order(tx, replace(pending, order_id="o2"))
    assert await store.load_order(tx, "o2") is None


async def test_transitions_are_saved_and_the_history_grows_per_status(
    tx: SqliteTx, pending: Order
) -> None:
    await tx.migrate(store.SCHEMA)
    await store.insert_order(tx, pending)
    confirmed = confirm(pending, "pay-1", T1).order
    assert await store.save_order(tx, pending, confirmed)
    # A writer still holding the PENDING order loses: its decision was made on stale state.
    stale = cancel(pending, CancellationReason.PAYMENT_FAILED, "x", T1).order
    assert not await store.save_order(tx, pending, stale)
    notified = mark_notified(confirmed, T1).order
    assert await store.save_order(tx, confirmed, notified)
    assert await store.load_order(tx, "o1") == notified
    entries = await store.history(tx, "o1")
    assert [(e.seq, e.status) for e in entries] == [
        (1, OrderStatus.PENDING), (2, OrderStatus.CONFIRMED),
    ]  # fmt: skip
    assert [e.seq for e in await store.history(tx, "o1", after_seq=1)] == [2]


async def test_a_catch_up_confirmation_is_recorded_in_the_history_before_the_shipment(
    tx: SqliteTx, pending: Order
) -> None:
    await tx.migrate(store.SCHEMA)
    await store.insert_order(tx, pending)
    t = ship(pending, "shp-1", "UPS1", T1, payment_id="pay-1")
    assert await store.save_order(tx, pending, t.order, t.entered)
    history = await store.history(tx, "o1")
    assert [entry.status for entry in history] == [
        OrderStatus.PENDING, OrderStatus.CONFIRMED, OrderStatus.SHIPPED,
    ]  # fmt: skip


async def test_orders_are_listed_oldest_first_in_pages(tx: SqliteTx, catalog: Catalog) -> None:
    await tx.migrate(store.SCHEMA)
    for i in range(5):
        request = replace(VALID, idempotency_key=f"k{i}", customer_id="c" if i % 2 else "d")
        await store.insert_order(tx, new_order(f"o{i}", request, catalog, T0 + timedelta(i)))
    seen, token = [], ""
    while True:
        page = await store.list_orders(tx, page_size=2, page_token=token)
        seen += [o.order_id for o in page.orders]
        if not (token := page.next_page_token):
            break
    assert seen == ["o0", "o1", "o2", "o3", "o4"]
    only_c = await store.list_orders(tx, page_size=10, customer_id="c")
    assert [o.order_id for o in only_c.orders] == ["o1", "o3"] and only_c.next_page_token == ""


async def test_a_page_token_we_did_not_hand_out_is_refused(tx: SqliteTx) -> None:
    await tx.migrate(store.SCHEMA)
    with pytest.raises(store.InvalidPageToken):
        await store.list_orders(tx, page_token="not-a-token")


def test_an_address_as_a_dict_has_every_field_by_name() -> None:
    # The fingerprint and the stored row use as_dict: a field added to Address must show up.
    address = Address("Ada", "1 Main St", "Springfield", "12345", "US", "Apt 2")
    assert address.as_dict() == dataclasses.asdict(address)
    assert Address(**address.as_dict()) == address


def test_a_saga_ends_once_shipped_and_notified_or_once_cancelled(pending: Order) -> None:
    confirmed = confirm(pending, "pay-1", T1).order
    shipped = ship(confirmed, "ship-1", "trk-1", T1).order
    notified = mark_notified(shipped, T1).order
    assert saga_outcome(pending, confirmed) is None
    assert saga_outcome(confirmed, shipped) is None  # the customer is not told yet
    assert saga_outcome(shipped, notified) == "shipped"
    # NotificationSent may overtake OrderShipped: the saga ends at the shipment then.
    early_notice = mark_notified(confirmed, T1).order
    assert saga_outcome(early_notice, ship(early_notice, "s", "t", T1).order) == "shipped"

    cancelled = cancel(pending, CancellationReason.PAYMENT_FAILED, "declined", T1).order
    assert saga_outcome(pending, cancelled) == "cancelled"
    assert saga_outcome(cancelled, mark_notified(cancelled, T1).order) is None  # ended already
