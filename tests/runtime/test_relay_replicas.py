"""Two replicas of a service share one Postgres database: their relays claim rows, so each row
is published once (not twice with the broker dropping the copy)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from choreo import dlq, outbox
from choreo.broker import BrokerLink
from choreo.settings import RuntimeSettings
from choreo.store.port import Database
from choreo.store.postgres import PostgresDatabase
from choreo.store.schema import runtime_schema
from choreo.streams import ensure_streams
from choreo.testing import envelope_for, stream_count, wait_for
from tests.runtime.test_relay_robust import stop_relay
from tests.testkit import desk_events, fresh_database

pytestmark = pytest.mark.usefixtures("testkit_contracts")

ROWS = 3000


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """A database of its own on the local Postgres, dropped afterwards."""
    async with fresh_database("relay") as url:
        yield url


async def test_two_relays_on_one_postgres_database_publish_each_row_once(
    nc: Any, js: Any, database_url: str
) -> None:
    await ensure_streams(js, RuntimeSettings())
    first = await PostgresDatabase.connect(database_url)
    second = await PostgresDatabase.connect(database_url)
    try:
        await first.migrate(runtime_schema(first.dialect))
        await second.migrate(runtime_schema(second.dialect))
        async with first.transaction() as tx:  # a backlog, as after an outage
            for n in range(ROWS):
                message = desk_events.TicketOpened(ticket_id=f"o{n}", customer_id="c1")
                envelope = envelope_for(message, aggregate_id=f"o{n}")
                await outbox.enqueue(tx, envelope, message.SerializeToString())
                if n == ROWS // 2:  # and one row no broker takes, in the middle of it
                    big = envelope_for(message, aggregate_id="big")
                    await outbox.enqueue(tx, big, b"x" * (2 * 1024 * 1024))
        # Small batches so the replicas' sweeps overlap many times.
        relays = [
            outbox.OutboxRelay(db, BrokerLink.of(nc), batch=50, sweep_interval_s=0.05)
            for db in (first, second)
        ]
        stopping = asyncio.Event()
        running = [asyncio.create_task(relay.run(stopping)) for relay in relays]
        try:
            await wait_for(lambda: _empty(first), timeout=30, what="the shared outbox to drain")
        finally:
            await stop_relay(stopping, *running)
        assert await stream_count(js, "TESTKIT_DESK") == ROWS
        assert [relay.duplicates_dropped for relay in relays] == [0, 0]
        assert sum(relay.published for relay in relays) == ROWS
        assert all(relay.published > 0 for relay in relays)  # they shared the work
        # The oversized row is parked once, with one notice, whichever replica met it.
        assert sum(relay.parked for relay in relays) == 1
        (parked,) = await dlq.list_parked(first)
        assert (parked.event_id, parked.reason) == (big.event_id, dlq.TOO_LARGE)
        assert len(await dlq.list_dead_letters(js)) == 1
    finally:
        await first.close()
        await second.close()


async def _empty(db: Database) -> bool:
    async with db.read() as tx:
        row = await tx.fetchone("SELECT COUNT(*) FROM choreo_outbox")
    return row is not None and row[0] == 0
