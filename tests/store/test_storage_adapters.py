"""One suite for every storage adapter: SQLite files and the real Postgres on this machine.

A handler never sees which adapter it runs on, so the port's promises (commit together, roll
back together, the inbox's unique key, snapshot reads, portable SQL) are checked on both.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from choreo import inbox, outbox
from choreo.broker import EmbeddedBroker
from choreo.service import ServiceRuntime
from choreo.settings import RuntimeSettings
from choreo.store import open_database
from choreo.store.port import Database
from choreo.store.schema import runtime_schema
from choreo.testing import envelope_for, publish_event, stream_count, wait_for
from tests.runtime import probe
from tests.testkit import desk_events

pytestmark = pytest.mark.usefixtures("testkit_contracts")

STOCK_OF = "SELECT available FROM stock WHERE sku = ?"
POSTGRES_ADMIN_URL = os.environ.get("CHOREO_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """The same database port on a SQLite file, and on a fresh database of the local
    Postgres (created here, dropped afterwards)."""
    admin = None
    name = f"choreo_test_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'service.db'}"
    else:
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    database = await open_database(url)
    stock_table = "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available INTEGER)"
    await database.migrate([*runtime_schema(database.dialect), stock_table])
    try:
        yield database
    finally:
        await database.close()
        if admin is not None:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


async def test_a_transaction_commits_everything_or_nothing(db: Database) -> None:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO stock (sku, available) VALUES (?, ?)", ("A", 5))
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("UPDATE stock SET available = available - ? WHERE sku = ?", (2, "A"))
            await inbox.record_handled(tx, "c", "e-1")
            raise RuntimeError("handler failed")
    async with db.read() as tx:
        assert await tx.fetchone(STOCK_OF, ("A",)) == (5,)
        assert not await inbox.already_handled(tx, "c", "e-1")


async def test_the_inbox_key_tells_a_first_delivery_from_a_duplicate(db: Database) -> None:
    async with db.transaction() as tx:
        assert await inbox.record_handled(tx, "stock__testkit_desk_v1_TicketOpened", "e-1")
    async with db.transaction() as tx:
        assert not await inbox.record_handled(tx, "stock__testkit_desk_v1_TicketOpened", "e-1")
        assert await inbox.record_handled(tx, "another_consumer", "e-1")


async def test_outbox_rows_and_aggregate_versions_commit_with_the_state(db: Database) -> None:
    event = desk_events.TicketAccepted(ticket_id="o-1")
    async with db.transaction() as tx:
        first = await outbox.next_aggregate_version(tx, "ticket", "o-1")
        second = await outbox.next_aggregate_version(tx, "ticket", "o-1")
        await outbox.enqueue(
            tx,
            envelope_for(event, aggregate_id="o-1", version=second, correlation_id="o-1"),
            event.SerializeToString(),
        )
    assert (first, second) == (1, 2)
    async with db.read() as tx:
        rows = await tx.fetchall("SELECT subject, body FROM choreo_outbox")
    assert [(subject, bytes(body)) for subject, body in rows] == [
        ("testkit.desk.v1.TicketAccepted.o-1", event.SerializeToString())
    ]


async def test_a_read_sees_only_committed_data(db: Database) -> None:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO stock (sku, available) VALUES (?, ?)", ("B", 1))
        async with db.read() as reader:
            assert (
                await reader.fetchone("SELECT available FROM stock WHERE sku = ?", ("B",)) is None
            )
    async with db.read() as reader:
        assert await reader.fetchone("SELECT available FROM stock WHERE sku = ?", ("B",)) == (1,)


async def test_pruning_forgets_what_the_stream_has_forgotten(db: Database) -> None:
    async with db.transaction() as tx:
        await inbox.record_handled(tx, "c", "old")
        await tx.execute(
            "UPDATE choreo_inbox SET handled_at = handled_at - 1000 WHERE event_id = ?", ("old",)
        )
        await inbox.record_handled(tx, "c", "new")
    async with db.transaction() as tx:
        assert await inbox.prune(tx, older_than_s=500) == 1
    async with db.read() as tx:
        assert not await inbox.already_handled(tx, "c", "old")
        assert await inbox.already_handled(tx, "c", "new")


async def test_a_service_on_postgres_applies_a_redelivered_event_once(
    broker: EmbeddedBroker, js: Any
) -> None:
    """The runtime end to end on Postgres: real broker, same handler code as on SQLite."""
    name = f"choreo_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    settings = RuntimeSettings(
        service="probe",
        nats_url=broker.url,
        database_url=url,
        fetch_timeout_s=0.2,
        relay_sweep_interval_s=0.2,
    )
    service = ServiceRuntime(probe.definition(probe.Behaviour()), settings)
    await service.start()
    try:
        first = await publish_event(
            js, desk_events.TicketOpened(ticket_id="pg-1"), aggregate_id="pg-1"
        )
        await publish_event(
            js,
            desk_events.TicketOpened(ticket_id="pg-1"),
            aggregate_id="pg-1",
            event_id=first.event_id,
            msg_id=f"{first.event_id}-again",
        )

        async def reserved_once_and_duplicate_seen() -> bool:
            stats = service.consumers[0].stats.outcomes
            return stats.get("handled") == 1 and stats.get("duplicate") == 1

        await wait_for(reserved_once_and_duplicate_seen, what="one handling and one duplicate")
        async with service.db.read() as tx:
            assert await tx.fetchall("SELECT ticket_id, applied FROM effects") == [("pg-1", 1)]
        assert await stream_count(js, "TESTKIT_STOCK") == 1
    finally:
        await service.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
