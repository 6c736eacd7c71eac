"""Catalog: the default file loads; every mistake names the file, the entry and the fix."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from services.catalog import Catalog, CatalogError, load_catalog, parse_catalog
from services.values import Money

VALID: dict[str, Any] = {
    "currency": "USD",
    "products": [{"sku": "A", "name": "Apple", "unit_price_minor": 100, "initial_stock": 3}],
    "customers": [{"customer_id": "c1", "credit_limit_minor": 500}],
}


def broken(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    target: Any = data
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[int(last) if last.isdigit() else last] = value
    return data


def test_the_default_catalog_has_a_low_stock_sku_and_a_low_limit_customer(
    catalog: Catalog,
) -> None:
    assert 6 <= len(catalog.products) <= 10
    assert min(p.initial_stock for p in catalog.products.values()) <= 5
    # The low-limit customer cannot afford one desk lamp: that is the PaymentFailed path.
    lamp = catalog.products["SKU-LAMP"].unit_price.amount_minor
    assert catalog.credit_limit_minor("cust-low-limit") < lamp
    assert catalog.customers["cust-bob"].preferred_channel == "SMS"


def test_a_valid_catalog_is_parsed_into_money_and_limits() -> None:
    catalog = parse_catalog(VALID)
    assert catalog.products["A"].unit_price == Money(100, "USD")
    assert catalog.credit_limit_minor("c1") == 500


def test_an_unknown_customer_gets_the_default_credit_limit() -> None:
    assert parse_catalog({**VALID, "default_credit_limit_minor": 42}).credit_limit_minor("x") == 42


def test_a_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"missing\.json.*cannot be read"):
        load_catalog(tmp_path / "missing.json")


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"currency": "USD",\n "products": [}')
    with pytest.raises(CatalogError, match=r"bad\.json: line 2 .*invalid JSON"):
        load_catalog(path)


def test_an_error_in_a_file_names_the_file_and_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "cat.json"
    path.write_text(json.dumps(broken("products.0.initial_stock", -1)))
    with pytest.raises(CatalogError, match=r"cat\.json: products\[0\] \(sku 'A'\)\.initial_stock"):
        load_catalog(path)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("currency", "XYZ", r"currency: 'XYZ' is not a supported currency.*Fix: use one of"),
        ("products", [], r"products: missing or empty"),
        ("products.0", "A", r"products\[0\]: is not an object"),
        ("products.0.sku", "", r"products\[0\]\.sku"),
        ("products.0.name", None, r"\(sku 'A'\)\.name"),
        ("products.0.unit_price_minor", 1.5, r"unit_price_minor: 1\.5 is not a whole number"),
        ("products.0.unit_price_minor", "100", r"unit_price_minor.*without quotes"),
        ("products.0.unit_price_minor", 0, r"unit_price_minor: 0 is not a whole number in 1\.\."),
        ("products.0.initial_stock", True, r"initial_stock: True"),
        ("customers", {}, r"customers: is not a list"),
        ("customers.0.credit_limit_minor", -5, r"\(customer_id 'c1'\)\.credit_limit_minor"),
        ("customers.0.preferred_channel", "PIGEON", r"preferred_channel: 'PIGEON'"),
    ],
)
def test_each_invalid_entry_is_reported_with_where_and_how_to_fix(
    path: str, value: Any, message: str
) -> None:
    with pytest.raises(CatalogError, match=message) as info:
        parse_catalog(broken(path, value), source="cat.json")
    assert str(info.value).startswith("catalog cat.json: ")
    assert "Fix: " in str(info.value)


def test_duplicate_skus_and_customers_are_refused() -> None:
    data = copy.deepcopy(VALID)
    data["products"].append(dict(data["products"][0]))
    with pytest.raises(CatalogError, match=r"products\[1\] \(sku 'A'\): duplicate sku"):
        parse_catalog(data)
    data = copy.deepcopy(VALID)
    data["customers"].append(dict(data["customers"][0]))
    with pytest.raises(CatalogError, match=r"duplicate customer_id"):
        parse_catalog(data)


def test_a_top_level_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(CatalogError, match="top level"):
        parse_catalog([1, 2])
