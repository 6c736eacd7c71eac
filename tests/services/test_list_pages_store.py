"""Keyset pages (services/paging.py) on both stores: a real SQLite file and the local Postgres.

Rows written in the same instant tie on ``created_at``; the order id breaks the tie, so paging
through them returns every row once, newest first, and a token of another shape is refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from choreo.store import open_database
from choreo.store.port import Database
from services.inventory import store as inventory_store
from services.paging import InvalidPageToken, encode_token
from services.payment import store as payment_store
from services.payment.domain import Payment, PaymentStatus
from services.values import Money
from tests.postgres import fresh_database

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        database = await open_database(f"sqlite:///{tmp_path}/payment.db")
        yield database
        await database.close()
        return
    async with fresh_database() as url:
        database = await open_database(url)
        yield database
        await database.close()


async def test_payments_page_newest_first_with_ties_broken_by_order_id(db: Database) -> None:
    await db.migrate(payment_store.SCHEMA)
    # Three at T0 (a tie), two later: newest first is o-5, o-4, then o-3, o-2, o-1 by order id.
    written = [("o-1", T0), ("o-2", T0), ("o-3", T0), ("o-4", T0 + timedelta(seconds=1))]
    written.append(("o-5", T0 + timedelta(seconds=2)))
    async with db.transaction() as tx:
        for order_id, at in written:
            payment = Payment(
                order_id, f"pay-{order_id}", "c-1", Money(100, "USD"), PaymentStatus.COMPLETED
            )
            assert await payment_store.insert_payment(tx, payment, at)

    seen: list[str] = []
    token, pages = "", 0
    async with db.read() as tx:
        while True:
            page, token = await payment_store.page_of_payments(tx, 2, token)
            seen += [p.order_id for p in page]
            pages += 1
            if not token:
                break
        whole, last = await payment_store.page_of_payments(tx, 0, "")  # 0: the default page
        with pytest.raises(InvalidPageToken, match="ListPayments"):
            await payment_store.page_of_payments(tx, 2, encode_token(["only-one-key"]))
    assert seen == ["o-5", "o-4", "o-3", "o-2", "o-1"]
    assert pages == 3
    assert ([p.order_id for p in whole], last) == (seen, "")


async def test_stock_pages_by_sku(db: Database) -> None:
    await db.migrate(inventory_store.SCHEMA)
    async with db.transaction() as tx:
        for sku in ["SKU-C", "SKU-A", "SKU-B"]:
            await tx.execute(
                "INSERT INTO stock (sku, initial, available, reserved, shipped)"
                " VALUES (?, 5, 5, 0, 0)",
                (sku,),
            )
    async with db.read() as tx:
        first, token = await inventory_store.list_stock(tx, 2, "")
        rest, end = await inventory_store.list_stock(tx, 2, token)
    assert [level.sku for level in first + rest] == ["SKU-A", "SKU-B", "SKU-C"]
    assert end == ""
