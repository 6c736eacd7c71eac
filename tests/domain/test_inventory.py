"""Inventory: reserve all lines or none; release and ship exactly once; stock is conserved."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from services.catalog import Catalog
from services.inventory import store
from services.inventory.domain import (
    NoChange,
    RejectionReason,
    Reservation,
    ReservationRejected,
    ReservationStatus,
    Reserved,
    Shortage,
    SkuQuantity,
    StockLevel,
    Transition,
    apply,
    release,
    reservation_id_for,
    reserve,
    ship,
    unconserved,
)
from tests.domain.conftest import SqliteTx

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class L:
    sku: str
    quantity: int


def fresh(sku: str, n: int) -> StockLevel:
    return StockLevel(sku, initial=n, available=n, reserved=0, shipped=0)


def levels_after(stock: dict[str, StockLevel], decision: Reserved | Transition) -> list[StockLevel]:
    return [apply(stock[a.sku], a) for a in decision.adjustments]


def test_given_stock_of_2_when_an_order_for_3_is_placed_then_rejected_with_a_shortage() -> None:
    decision = reserve({"A": fresh("A", 2)}, [L("A", 3)])
    assert isinstance(decision, ReservationRejected)
    assert decision.reason is RejectionReason.INSUFFICIENT_STOCK
    assert decision.shortages == (Shortage("A", requested=3, available=2),)


def test_given_enough_stock_when_reserved_then_available_moves_to_reserved() -> None:
    stock = {"A": fresh("A", 5), "B": fresh("B", 1)}
    decision = reserve(stock, [L("A", 2), L("B", 1)])
    assert isinstance(decision, Reserved)
    after = levels_after(stock, decision)
    assert after == [StockLevel("A", 5, 3, 2, 0), StockLevel("B", 1, 0, 1, 0)]
    assert unconserved(after) == []


def test_one_short_line_rejects_the_whole_order_atomically() -> None:
    decision = reserve({"A": fresh("A", 5), "B": fresh("B", 0)}, [L("A", 1), L("B", 1)])
    assert isinstance(decision, ReservationRejected)
    assert [s.sku for s in decision.shortages] == ["B"]


def test_unknown_sku_is_rejected_as_unknown_not_as_short() -> None:
    decision = reserve({"A": fresh("A", 0)}, [L("A", 1), L("NOPE", 1)])
    assert isinstance(decision, ReservationRejected)
    assert decision.reason is RejectionReason.UNKNOWN_SKU
    assert decision.shortages == (Shortage("NOPE", requested=1, available=0),)


def test_lines_with_the_same_sku_are_summed_before_checking_stock() -> None:
    decision = reserve({"A": fresh("A", 3)}, [L("A", 2), L("A", 2)])
    assert isinstance(decision, ReservationRejected)
    assert decision.shortages == (Shortage("A", requested=4, available=3),)
    assert decision.quantities == (SkuQuantity("A", 4),)


def test_exactly_all_available_stock_can_be_reserved() -> None:
    assert isinstance(reserve({"A": fresh("A", 3)}, [L("A", 3)]), Reserved)


def reservation(status: ReservationStatus) -> Reservation:
    return Reservation("o1", reservation_id_for("o1"), status, (SkuQuantity("A", 2),))


def test_release_of_a_reserved_reservation_gives_the_stock_back() -> None:
    decision = release(reservation(ReservationStatus.RESERVED))
    assert isinstance(decision, Transition)
    assert decision.status is ReservationStatus.RELEASED
    assert apply(StockLevel("A", 5, 3, 2, 0), decision.adjustments[0]) == fresh("A", 5)


def test_ship_of_a_reserved_reservation_moves_reserved_to_shipped() -> None:
    decision = ship(reservation(ReservationStatus.RESERVED))
    assert isinstance(decision, Transition)
    assert decision.status is ReservationStatus.SHIPPED
    assert apply(StockLevel("A", 5, 3, 2, 0), decision.adjustments[0]) == StockLevel(
        "A", 5, 3, 0, 2
    )


def test_release_after_ship_does_not_give_stock_back() -> None:
    assert isinstance(release(reservation(ReservationStatus.SHIPPED)), NoChange)


def test_release_twice_and_ship_after_release_are_no_ops() -> None:
    assert isinstance(release(reservation(ReservationStatus.RELEASED)), NoChange)
    assert isinstance(ship(reservation(ReservationStatus.RELEASED)), NoChange)
    assert isinstance(ship(reservation(ReservationStatus.SHIPPED)), NoChange)


def test_release_of_a_rejected_or_missing_reservation_is_a_no_op() -> None:
    assert isinstance(release(reservation(ReservationStatus.REJECTED)), NoChange)
    assert isinstance(release(None), NoChange)
    assert isinstance(ship(None), NoChange)


def test_reservation_id_is_derived_from_the_order_so_retries_agree() -> None:
    assert reservation_id_for("o1") == reservation_id_for("o1") != reservation_id_for("o2")


# --- store, against a real SQLite file ---


async def test_seed_inserts_catalog_stock_once_and_never_resets_it(
    tx: SqliteTx, catalog: Catalog
) -> None:
    await tx.migrate(store.SCHEMA)
    assert await store.seed_stock(tx, catalog) == len(catalog.products)
    outcome = reserve(await store.load_stock(tx, ["SKU-RARE"]), [L("SKU-RARE", 2)])
    await store.apply_reservation(tx, "o1", "r1", outcome, NOW)
    assert await store.seed_stock(tx, catalog) == 0
    assert await store.stock_level(tx, "SKU-RARE") == StockLevel("SKU-RARE", 5, 3, 2, 0)


async def test_reserve_then_ship_then_release_keeps_stock_conserved(
    tx: SqliteTx, catalog: Catalog
) -> None:
    await tx.migrate(store.SCHEMA)
    await store.seed_stock(tx, catalog)
    lines = [L("SKU-RARE", 2), L("SKU-MUG", 1)]
    outcome = reserve(await store.load_stock(tx, ["SKU-RARE", "SKU-MUG"]), lines)
    assert await store.apply_reservation(tx, "o1", reservation_id_for("o1"), outcome, NOW)
    # A redelivered OrderCreated must not reserve a second time.
    assert not await store.apply_reservation(tx, "o1", reservation_id_for("o1"), outcome, NOW)
    assert await store.stock_level(tx, "SKU-RARE") == StockLevel("SKU-RARE", 5, 3, 2, 0)

    reserved = await store.load_reservation(tx, "o1")
    assert reserved is not None and reserved.status is ReservationStatus.RESERVED
    shipped = ship(reserved)
    assert isinstance(shipped, Transition)
    assert await store.apply_transition(tx, "o1", shipped)

    after_ship = await store.load_reservation(tx, "o1")
    assert isinstance(release(after_ship), NoChange)
    # Even a stale release decision cannot move stock once the status moved on.
    stale = release(reserved)
    assert isinstance(stale, Transition)
    assert not await store.apply_transition(tx, "o1", stale)

    assert await store.stock_level(tx, "SKU-RARE") == StockLevel("SKU-RARE", 5, 3, 0, 2)
    assert unconserved(await store.all_stock(tx)) == []


async def test_a_rejected_reservation_is_recorded_and_moves_no_stock(
    tx: SqliteTx, catalog: Catalog
) -> None:
    await tx.migrate(store.SCHEMA)
    await store.seed_stock(tx, catalog)
    outcome = reserve(await store.load_stock(tx, ["SKU-RARE"]), [L("SKU-RARE", 6)])
    assert isinstance(outcome, ReservationRejected)
    await store.apply_reservation(tx, "o2", reservation_id_for("o2"), outcome, NOW)
    recorded = await store.load_reservation(tx, "o2")
    assert recorded is not None and recorded.status is ReservationStatus.REJECTED
    assert await store.stock_level(tx, "SKU-RARE") == fresh("SKU-RARE", 5)


async def test_load_stock_leaves_out_unknown_skus(tx: SqliteTx, catalog: Catalog) -> None:
    await tx.migrate(store.SCHEMA)
    await store.seed_stock(tx, catalog)
    assert set(await store.load_stock(tx, ["SKU-MUG", "NOPE"])) == {"SKU-MUG"}
    assert await store.stock_level(tx, "NOPE") is None


async def test_a_stale_decision_taking_more_than_is_available_is_refused(
    tx: SqliteTx, catalog: Catalog
) -> None:
    await tx.migrate(store.SCHEMA)
    await store.seed_stock(tx, catalog)
    stock = await store.load_stock(tx, ["SKU-RARE"])
    first, second = reserve(stock, [L("SKU-RARE", 4)]), reserve(stock, [L("SKU-RARE", 4)])
    assert await store.apply_reservation(tx, "o1", "r1", first, NOW)
    with pytest.raises(store.StockConflict):
        await store.apply_reservation(tx, "o2", "r2", second, NOW)
