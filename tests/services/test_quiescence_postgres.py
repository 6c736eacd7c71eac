"""The audit's quiescence check reads the services' outboxes on Postgres: rows not yet
published count as events in flight."""

from __future__ import annotations

from choreo.store import open_database
from choreo.store.schema import runtime_schema
from services.audit import database_outbox_rows
from tests.postgres import fresh_database


async def test_the_quiescence_check_counts_unpublished_events_on_postgres() -> None:
    async with fresh_database() as url:
        db = await open_database(url)
        try:
            assert await database_outbox_rows({"order": url}) == 0  # not migrated yet
            await db.migrate(runtime_schema(db.dialect))
            async with db.transaction() as tx:
                for n in range(2):
                    await tx.execute(
                        "INSERT INTO choreo_outbox (event_id, subject, headers, body, created_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (f"e-{n}", "shop.order.v1.OrderCreated", "{}", b"", 0.0),
                    )
            assert await database_outbox_rows({"order": url}) == 2
        finally:
            await db.close()
