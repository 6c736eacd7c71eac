"""OrderCreated v2 (pure): the order service's v2 says what its v1 says, in exact decimals, and
inventory's reading of a v2 gives back the v1 it works in; an amount finer than its currency's
minor unit is refused, naming the field."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from services.inventory import mapping as inventory_mapping
from services.order import mapping as order_mapping
from services.values import decimal_to_minor, minor_to_decimal
from shop.common.v1 import address_pb2, money_pb2, order_line_pb2
from shop.common.v2 import money_pb2 as money_v2_pb2
from shop.order.v1 import events_pb2 as order_v1


@pytest.mark.parametrize(
    ("minor", "currency", "decimal"),
    [
        (1050, "USD", (10, 500_000_000)),
        (1050, "JPY", (1050, 0)),
        (1, "EUR", (0, 10_000_000)),
        (0, "GBP", (0, 0)),
        (2**63 - 1, "CHF", (92233720368547758, 70_000_000)),
    ],
)
def test_minor_units_and_exact_decimals_convert_both_ways(
    minor: int, currency: str, decimal: tuple[int, int]
) -> None:
    assert minor_to_decimal(minor, currency) == decimal
    assert decimal_to_minor(*decimal, currency) == minor


@pytest.mark.parametrize(
    ("units", "nanos", "currency", "why"),
    [
        (10, 5, "USD", "finer than the minor unit of USD"),
        (1, 500_000_000, "JPY", "finer than the minor unit of JPY"),
        (-1, 0, "USD", "not a non-negative amount"),
        (1, 1_000_000_000, "USD", "not a non-negative amount"),
        (1, 0, "XXX", "is not one of"),
    ],
)
def test_an_amount_without_minor_units_is_refused(
    units: int, nanos: int, currency: str, why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        decimal_to_minor(units, nanos, currency)


def usd(minor: int) -> money_pb2.Money:
    return money_pb2.Money(amount_minor=minor, currency_code="USD")


V1 = order_v1.OrderCreated(
    order_id="o-1",
    customer_id="c-1",
    lines=[
        order_line_pb2.OrderLine(sku="SKU-MUG", quantity=2, unit_price=usd(1299)),
        order_line_pb2.OrderLine(sku="SKU-PEN", quantity=3, unit_price=usd(150)),
    ],
    total=usd(3048),
    shipping_address=address_pb2.Address(
        recipient_name="Ada",
        line1="1 Main St",
        city="Springfield",
        postal_code="1",
        country_code="US",
    ),
    payment_token="tok_visa",
    placed_at=Timestamp(seconds=1_767_225_600),
)


def test_v2_states_v1_in_exact_decimals_with_line_totals() -> None:
    v2 = order_mapping.order_created_v2(V1)
    assert v2.total == money_v2_pb2.Money(currency_code="USD", units=30, nanos=480_000_000)
    assert [(line.sku, line.quantity) for line in v2.lines] == [("SKU-MUG", 2), ("SKU-PEN", 3)]
    assert [(line.line_total.units, line.line_total.nanos) for line in v2.lines] == [
        (25, 980_000_000), (4, 500_000_000),
    ]  # fmt: skip
    assert (v2.order_id, v2.customer_id, v2.payment_token) == ("o-1", "c-1", "tok_visa")


@pytest.mark.parametrize(("versions", "names"), [
    ((1,), ["shop.order.v1.OrderCreated"]),
    ((2,), ["shop.order.v2.OrderCreated"]),
    ((1, 2), ["shop.order.v1.OrderCreated", "shop.order.v2.OrderCreated"]),
])  # fmt: skip
def test_the_order_publishes_the_versions_asked_for_oldest_first(
    versions: tuple[int, ...], names: list[str]
) -> None:
    events = order_mapping.order_created_versions(V1, versions)
    assert [e.DESCRIPTOR.full_name for e in events] == names


def test_inventory_reads_v2_back_into_the_v1_it_works_in() -> None:
    assert inventory_mapping.order_created_from_v2(order_mapping.order_created_v2(V1)) == V1


def test_inventory_refuses_a_v2_amount_finer_than_the_currency_naming_the_field() -> None:
    v2 = order_mapping.order_created_v2(V1)
    v2.lines[1].unit_price.nanos = 500_000_001
    with pytest.raises(ValueError, match=r"lines\[1\]\.unit_price: .*finer than"):
        inventory_mapping.order_created_from_v2(v2)
