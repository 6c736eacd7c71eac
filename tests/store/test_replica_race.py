"""Replicas of a service share one durable consumer and one Postgres database; when two of
them handle the same event at the same time, only one applies it: the inbox row is inserted
in the handler's own transaction, and its primary key makes the second insert wait for the
first transaction and then find the row (the second unit is rolled back as a duplicate)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import pytest

from choreo import inbox
from choreo.broker import EmbeddedBroker
from choreo.handling import HandlerContext
from choreo.service import ServiceDefinition, ServiceRuntime
from choreo.settings import RuntimeSettings
from choreo.store import open_database
from choreo.store.schema import runtime_schema
from choreo.testing import publish_event, stream_count, wait_for
from tests.testkit import desk_events, fresh_database, stock_events

pytestmark = pytest.mark.usefixtures("testkit_contracts")

EVENTS = 12


async def test_the_inbox_key_lets_one_of_two_racing_transactions_record_an_event() -> None:
    async with fresh_database() as url:
        first, second = await open_database(url), await open_database(url)
        try:
            await first.migrate(runtime_schema(first.dialect))
            async with first.transaction() as tx_a:
                assert await inbox.record_handled(tx_a, "stock__TicketOpened", "e-1")
                # The other replica's insert of the same key waits for this transaction ...
                racing = asyncio.create_task(_record(second, "stock__TicketOpened", "e-1"))
                await asyncio.sleep(0.3)
                assert not racing.done(), "the second insert must wait for the first commit"
            # ... and, once it commits, finds the row: not recorded, so not applied.
            assert await asyncio.wait_for(racing, 10) is False
        finally:
            await first.close()
            await second.close()


async def _record(db: Any, consumer: str, event_id: str) -> bool:
    async with db.transaction() as tx:
        return await inbox.record_handled(tx, consumer, event_id)


def replica_definition(entered: Counter[str]) -> ServiceDefinition:
    async def on_ticket_opened(ctx: HandlerContext, event: desk_events.TicketOpened) -> None:
        entered[event.ticket_id] += 1
        # Hold the event a moment before the transaction opens, so that the other replica
        # takes the other copy and both are inside this handler at once.
        await asyncio.sleep(0.2)
        await ctx.tx.execute(
            "INSERT INTO effects (ticket_id, applied) VALUES (?, 1) ON CONFLICT (ticket_id)"
            " DO UPDATE SET applied = effects.applied + 1",
            (event.ticket_id,),
        )
        ctx.emit(
            stock_events.ItemsHeld(ticket_id=event.ticket_id, hold_id="h"),
            aggregate_id=event.ticket_id,
        )

    return ServiceDefinition(
        name="racer",
        handlers={desk_events.TicketOpened: on_ticket_opened},
        schema=[
            "CREATE TABLE IF NOT EXISTS effects"
            " (ticket_id TEXT PRIMARY KEY, applied INTEGER NOT NULL)"
        ],
    )


async def test_two_replicas_racing_on_the_same_event_apply_it_once(
    broker: EmbeddedBroker, js: Any
) -> None:
    entered: Counter[str] = Counter()
    async with fresh_database() as url:
        settings = RuntimeSettings(
            service="racer",
            nats_url=broker.url,
            database_url=url,
            fetch_batch=1,  # one message per fetch: the two copies go to the two replicas
            fetch_timeout_s=0.2,
            relay_sweep_interval_s=0.2,
        )
        replicas = [ServiceRuntime(replica_definition(entered), settings) for _ in range(2)]
        for replica in replicas:
            await replica.start()
        try:
            for n in range(EVENTS):
                ticket_id = f"race-{n}-{uuid.uuid4().hex[:6]}"
                event = desk_events.TicketOpened(ticket_id=ticket_id)
                first = await publish_event(js, event, aggregate_id=ticket_id)
                # The same event again under a new Nats-Msg-Id: the broker keeps both copies.
                await publish_event(
                    js,
                    event,
                    aggregate_id=ticket_id,
                    event_id=first.event_id,
                    msg_id=f"{first.event_id}-again",
                )

            def finished() -> int:
                return sum(
                    n
                    for replica in replicas
                    for consumer in replica.consumers
                    for outcome, n in consumer.stats.outcomes.items()
                    if outcome in ("handled", "duplicate")
                )

            async def all_copies_done() -> bool:
                return finished() == 2 * EVENTS

            await wait_for(all_copies_done, timeout=60, what="both copies of every event")
            async with replicas[0].db.read() as tx:
                rows = await tx.fetchall("SELECT ticket_id, applied FROM effects")
            effects: dict[str, int] = {str(k): int(v) for k, v in rows}
            # Deliveries each replica took (applied, or found already applied by the other):
            # which of two racing copies commits first is up to timing, not the point here.
            per_replica = [
                sum(
                    c.stats.outcomes.get("handled", 0) + c.stats.outcomes.get("duplicate", 0)
                    for c in replica.consumers
                )
                for replica in replicas
            ]
            races = sum(1 for n in entered.values() if n == 2)
            print(f"handled per replica {per_replica}; true races {races} of {EVENTS}")
            assert len(effects) == EVENTS
            assert set(effects.values()) == {1}, effects  # never applied twice
            assert races >= EVENTS // 2, f"the copies rarely raced: {entered}"
            assert all(per_replica), "both replicas took a share of the work"

            async def published() -> bool:
                return await stream_count(js, "TESTKIT_STOCK") >= EVENTS

            await wait_for(published, what="the emitted events")
            await asyncio.sleep(0.5)
            assert await stream_count(js, "TESTKIT_STOCK") == EVENTS  # emitted once each
        finally:
            for replica in replicas:
                await replica.stop()
