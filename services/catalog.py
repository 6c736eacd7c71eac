"""The product and customer catalog: prices, initial stock and credit limits, from a JSON file.

One file feeds every service that needs reference data (inventory seeds stock from it, order
takes prices from it, the fake payment gateway takes credit limits from it), so a demo run is
reproducible from a single file. Loading validates everything up front and names the file, the
entry and the fix, because a bad catalog found at start-up is cheap and found mid-saga is not.

Format::

    {"currency": "USD",
     "default_credit_limit_minor": 500000,            # optional
     "products": [{"sku", "name", "unit_price_minor", "initial_stock"}, ...],
     "customers": [{"customer_id", "credit_limit_minor", "preferred_channel"?}, ...]}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.values import KNOWN_CURRENCIES, MAX_MINOR, Money

DEFAULT_CREDIT_LIMIT_MINOR = 1_000_000
CHANNELS = ("EMAIL", "SMS")
# Order validation caps a line at 1000 units and an order at 100 lines; capping the price too
# keeps every possible order total far inside the 64-bit bound.
MAX_UNIT_PRICE_MINOR = 10**12


class CatalogError(ValueError):
    def __init__(self, source: str, where: str, problem: str, fix: str) -> None:
        super().__init__(f"catalog {source}: {where}: {problem}. Fix: {fix}")
        self.source = source
        self.where = where


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    name: str
    unit_price: Money
    initial_stock: int


@dataclass(frozen=True, slots=True)
class Customer:
    customer_id: str
    credit_limit: Money
    preferred_channel: str = "EMAIL"


@dataclass(frozen=True, slots=True)
class Catalog:
    currency: str
    products: Mapping[str, Product]
    customers: Mapping[str, Customer] = field(default_factory=dict)
    default_credit_limit_minor: int = DEFAULT_CREDIT_LIMIT_MINOR

    def credit_limit_minor(self, customer_id: str) -> int:
        customer = self.customers.get(customer_id)
        return customer.credit_limit.amount_minor if customer else self.default_credit_limit_minor

    def credit_limits(self) -> dict[str, int]:
        return {c.customer_id: c.credit_limit.amount_minor for c in self.customers.values()}


def default_catalog_path() -> Path:
    return Path(__file__).resolve().parent.parent / "catalog" / "default.json"


def load_catalog(path: str | Path) -> Catalog:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(
            source, "file", f"cannot be read ({exc.strerror})", "point to an existing JSON file"
        ) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(
            source,
            f"line {exc.lineno} column {exc.colno}",
            f"invalid JSON ({exc.msg})",
            "make the file valid JSON",
        ) from exc
    return parse_catalog(data, source=source)


def parse_catalog(data: Any, source: str = "<memory>") -> Catalog:
    if not isinstance(data, dict):
        raise CatalogError(source, "top level", "is not a JSON object", 'use {"currency": ...}')
    currency = data.get("currency")
    if currency not in KNOWN_CURRENCIES:
        raise CatalogError(
            source,
            "currency",
            f"{currency!r} is not a supported currency",
            f"use one of {', '.join(sorted(KNOWN_CURRENCIES))}",
        )
    default_limit = data.get("default_credit_limit_minor", DEFAULT_CREDIT_LIMIT_MINOR)
    default_limit = _check_int(source, "default_credit_limit_minor", default_limit, 0, MAX_MINOR)
    products = _parse_products(source, data.get("products"), currency)
    customers = _parse_customers(source, data.get("customers", []), currency)
    return Catalog(currency, products, customers, default_limit)


def _parse_products(source: str, raw: Any, currency: str) -> dict[str, Product]:
    if not isinstance(raw, list) or not raw:
        raise CatalogError(source, "products", "missing or empty", "list at least one product")
    products: dict[str, Product] = {}
    for i, entry in enumerate(raw):
        where = f"products[{i}]"
        if not isinstance(entry, dict):
            raise CatalogError(source, where, "is not an object", 'use {"sku": ..., ...}')
        sku = _check_str(source, f"{where}.sku", entry.get("sku"))
        where = f"products[{i}] (sku {sku!r})"
        if sku in products:
            raise CatalogError(source, where, "duplicate sku", "give every product its own sku")
        name = _check_str(source, f"{where}.name", entry.get("name"))
        price = entry.get("unit_price_minor")
        price = _check_int(source, f"{where}.unit_price_minor", price, 1, MAX_UNIT_PRICE_MINOR)
        stock = entry.get("initial_stock")
        stock = _check_int(source, f"{where}.initial_stock", stock, 0, MAX_MINOR)
        products[sku] = Product(sku, name, Money(price, currency), stock)
    return products


def _parse_customers(source: str, raw: Any, currency: str) -> dict[str, Customer]:
    if not isinstance(raw, list):
        raise CatalogError(source, "customers", "is not a list", "use a list or leave it out")
    customers: dict[str, Customer] = {}
    for i, entry in enumerate(raw):
        where = f"customers[{i}]"
        if not isinstance(entry, dict):
            raise CatalogError(source, where, "is not an object", 'use {"customer_id": ...}')
        customer_id = _check_str(source, f"{where}.customer_id", entry.get("customer_id"))
        where = f"customers[{i}] (customer_id {customer_id!r})"
        if customer_id in customers:
            raise CatalogError(source, where, "duplicate customer_id", "list each customer once")
        limit = entry.get("credit_limit_minor")
        limit = _check_int(source, f"{where}.credit_limit_minor", limit, 0, MAX_MINOR)
        channel = entry.get("preferred_channel", "EMAIL")
        if channel not in CHANNELS:
            raise CatalogError(
                source,
                f"{where}.preferred_channel",
                f"{channel!r} is not a channel",
                f"use one of {', '.join(CHANNELS)}",
            )
        customers[customer_id] = Customer(customer_id, Money(limit, currency), channel)
    return customers


def _check_str(source: str, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(source, where, f"{value!r} is not a non-empty string", "set a name")
    return value


def _check_int(source: str, where: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CatalogError(
            source,
            where,
            f"{value!r} is not a whole number in {low}..{high}",
            "use an integer amount of minor units (cents) or items, without quotes",
        )
    return value
