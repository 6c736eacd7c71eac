"""Shipping: one booking per order, refusals for unserviceable destinations, outages retried."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.shipping import store
from services.shipping.domain import (
    Booking,
    ShipmentStatus,
    booked,
    booking_key,
    refused,
    should_book,
)
from services.shipping.provider import (
    FakeShippingProvider,
    IdempotencyKeyReused,
    ProviderUnavailable,
    Unserviceable,
)
from services.values import Address
from tests.domain.conftest import SqliteTx

NOW = datetime(2026, 1, 1, tzinfo=UTC)
HOME = Address("Ada Lovelace", "1 Main St", "Springfield", "12345", "US")


def provider(tmp_path: Path, failure_rate: float = 0.0, seed: int | None = None) -> Provider:
    return FakeShippingProvider(tmp_path / "carrier.db", failure_rate=failure_rate, seed=seed)


Provider = FakeShippingProvider


# --- decisions ---


def test_a_booking_becomes_a_booked_shipment() -> None:
    shipment = booked("o1", HOME, Booking("shp_1", "UPS000000000001", "UPS"))
    assert (shipment.status, shipment.tracking_id) == (ShipmentStatus.BOOKED, "UPS000000000001")


def test_a_refusal_becomes_a_failed_shipment_with_the_reason() -> None:
    shipment = refused("o1", HOME, "no delivery")
    assert (shipment.status, shipment.failure_reason) == (ShipmentStatus.FAILED, "no delivery")


def test_an_order_is_booked_only_when_no_shipment_is_recorded_yet() -> None:
    assert should_book(None)
    assert not should_book(refused("o1", HOME, "no"))
    assert booking_key("o1") == booking_key("o1") != booking_key("o2")


# --- the fake provider, against its own SQLite ledger ---


async def test_same_key_gives_the_same_booking_and_books_once(tmp_path: Path) -> None:
    carrier = provider(tmp_path)
    first = await carrier.book("k1", "o1", HOME)
    assert await carrier.book("k1", "o1", HOME) == first
    assert await provider(tmp_path).book("k1", "o1", HOME) == first
    assert first.carrier == "UPS" and first.tracking_id.startswith("UPS")
    assert (await carrier.ledger_counts()).bookings == {"o1": 1}


async def test_concurrent_calls_with_one_key_book_once(tmp_path: Path) -> None:
    carrier = provider(tmp_path)
    results = await asyncio.gather(*(carrier.book("k1", "o1", HOME) for _ in range(8)))
    assert len(set(results)) == 1
    assert (await carrier.ledger_counts()).bookings == {"o1": 1}


@pytest.mark.parametrize("country", ["AQ", "KP"])
async def test_an_unserviceable_country_is_refused(tmp_path: Path, country: str) -> None:
    with pytest.raises(Unserviceable, match=country):
        await provider(tmp_path).book("k1", "o1", replace(HOME, country_code=country))


async def test_a_placeholder_postal_code_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Unserviceable, match="00000"):
        await provider(tmp_path).book("k1", "o1", replace(HOME, postal_code="00000-1"))


async def test_a_refusal_is_repeated_for_the_same_key_and_books_nothing(tmp_path: Path) -> None:
    carrier = provider(tmp_path)
    for _ in range(2):
        with pytest.raises(Unserviceable):
            await carrier.book("k1", "o1", replace(HOME, country_code="AQ"))
    counts = await carrier.ledger_counts()
    assert (counts.bookings, counts.refusals) == ({}, {"o1": 1})


async def test_the_unserviceable_countries_are_configurable(tmp_path: Path) -> None:
    carrier = FakeShippingProvider(tmp_path / "c.db", unserviceable_countries={"US"})
    with pytest.raises(Unserviceable):
        await carrier.book("k1", "o1", HOME)
    assert await carrier.book("k2", "o2", replace(HOME, country_code="AQ"))


async def test_a_key_reused_for_another_order_is_refused(tmp_path: Path) -> None:
    carrier = provider(tmp_path)
    await carrier.book("k1", "o1", HOME)
    with pytest.raises(IdempotencyKeyReused):
        await carrier.book("k1", "o2", HOME)


async def test_an_unavailable_provider_is_transient_and_retrying_books_once(
    tmp_path: Path,
) -> None:
    carrier = provider(tmp_path, failure_rate=0.5, seed=3)
    bookings: set[Booking] = set()
    failures = 0
    for _ in range(40):
        try:
            bookings.add(await carrier.book("k1", "o1", HOME))
        except ProviderUnavailable:
            failures += 1
    assert failures and len(bookings) == 1
    assert (await carrier.ledger_counts()).bookings == {"o1": 1}


def test_a_failure_rate_outside_0_to_1_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        FakeShippingProvider(tmp_path / "c.db", failure_rate=-0.1)


# --- store ---


async def test_a_shipment_is_recorded_once_with_its_destination(tx: SqliteTx) -> None:
    await tx.migrate(store.SCHEMA)
    shipment = booked("o1", HOME, Booking("shp_1", "T1", "UPS"))
    assert await store.insert_shipment(tx, shipment, NOW)
    assert not await store.insert_shipment(tx, refused("o1", HOME, "late refusal"), NOW)
    assert await store.load_shipment(tx, "o1") == shipment
    assert await store.list_shipments(tx) == [shipment]
    assert await store.load_shipment(tx, "o2") is None
