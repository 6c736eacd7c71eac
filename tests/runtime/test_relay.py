"""The outbox relay against a real nats-server and a real SQLite file: publish, then delete."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest

from choreo import natsconn, outbox
from choreo.broker import BrokerLink
from choreo.settings import RuntimeSettings
from choreo.store.port import Database
from choreo.store.schema import runtime_schema
from choreo.store.sqlite import SqliteDatabase
from choreo.streams import ensure_streams
from choreo.testing import envelope_for, stream_count, wait_for
from tests.testkit import desk_events

pytestmark = pytest.mark.usefixtures("testkit_contracts")

STREAM = "TESTKIT_DESK"
SUBJECT = "testkit.desk.v1.TicketOpened"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = SqliteDatabase(tmp_path / "relay.db")
    await database.migrate(runtime_schema(database.dialect))
    yield database
    await database.close()


async def commit_events(db: Database, count: int, first: int = 0) -> list[outbox.OutboxRow]:
    rows = []
    async with db.transaction() as tx:
        for n in range(first, first + count):
            message = desk_events.TicketOpened(ticket_id=f"o{n}", customer_id="c1")
            envelope = envelope_for(message, aggregate_id=f"o{n}")
            rows.append(await outbox.enqueue(tx, envelope, message.SerializeToString()))
    return rows


async def outbox_size(db: Database) -> int:
    async with db.read() as tx:
        row = await tx.fetchone("SELECT COUNT(*) FROM choreo_outbox")
    assert row is not None
    return int(row[0])


async def test_submitted_rows_are_published_then_deleted_together_after_the_delay(
    nc: Any, js: Any, db: Database
) -> None:
    await ensure_streams(js, RuntimeSettings())
    relay = outbox.OutboxRelay(db, BrokerLink.of(nc), delete_delay_s=3.0, sweep_interval_s=30)
    stopping = asyncio.Event()
    running = asyncio.create_task(relay.run(stopping))
    try:
        relay.submit(await commit_events(db, 5))
        await wait_for(lambda: _has(js, 5), what="5 messages on the stream")
        # Published, but the delete waits for more ids to share its transaction.
        assert await outbox_size(db) == 5
        await wait_for(lambda: _empty(db), timeout=10, what="the outbox to be emptied")
    finally:
        stopping.set()
        await running
    assert relay.published == 5
    assert await stream_count(js, STREAM, SUBJECT) == 5


async def test_flush_publishes_and_deletes_everything_at_once(
    nc: Any, js: Any, db: Database
) -> None:
    await ensure_streams(js, RuntimeSettings())
    relay = outbox.OutboxRelay(db, BrokerLink.of(nc), delete_delay_s=60, sweep_interval_s=60)
    await commit_events(db, 3)  # left in the table, as after a crash: only a sweep finds them
    relay.submit(await commit_events(db, 2))
    await relay.flush(timeout_s=10)
    assert await outbox_size(db) == 0
    assert await stream_count(js, STREAM, SUBJECT) == 5


async def test_a_row_committed_while_a_batch_awaits_its_acks_is_sent_at_once(
    broker: Any, nc: Any, js: Any, db: Database
) -> None:
    """The relay pipelines: the next batch goes out while the one before still awaits its
    acks (here for as long as the broker is stopped), and both settle when they come."""
    await ensure_streams(js, RuntimeSettings())
    relay = outbox.OutboxRelay(db, BrokerLink.of(nc), delete_delay_s=60)
    first, second = await commit_events(db, 1), await commit_events(db, 1)
    broker.pause()  # no ack can come back until it resumes
    try:
        relay.submit(first)
        assert await relay.send_queued() == 1
        relay.submit(second)
        assert await asyncio.wait_for(relay.send_queued(), timeout=2) == 1
        assert relay.in_flight == 2  # both sent, neither acked
        assert relay.published == 0
    finally:
        broker.resume()
    assert await relay.settled() == 2
    assert (relay.published, relay.in_flight) == (2, 0)
    await relay.delete_published()
    assert await outbox_size(db) == 0
    assert await stream_count(js, STREAM, SUBJECT) == 2


async def test_a_command_s_rows_are_on_the_wire_when_send_now_returns(
    broker: Any, js: Any, db: Database
) -> None:
    """A command sends its rows itself, before it answers: when ``send_now`` returns, the
    publish is in flight and written to the socket, not queued for the relay's next turn or
    the client's flusher."""
    await ensure_streams(js, RuntimeSettings())
    client = await natsconn.connect([broker.url])
    try:
        relay = outbox.OutboxRelay(db, BrokerLink.of(client), delete_delay_s=60)
        await relay.send_now(await commit_events(db, 1))
        assert (relay.queued, relay.in_flight, client.pending_data_size) == (0, 1, 0)
        assert await relay.settled() == 1
        assert await stream_count(js, STREAM, SUBJECT) == 1
    finally:
        await client.close()


async def test_a_command_never_waits_for_room_in_the_window(
    broker: Any, js: Any, db: Database
) -> None:
    """With the window full (the broker stopped, so no ack comes back), a command's rows
    queue for the run loop at once instead of holding the command until there is room."""
    await ensure_streams(js, RuntimeSettings())
    client = await natsconn.connect([broker.url])
    try:
        relay = outbox.OutboxRelay(
            db, BrokerLink.of(client), max_in_flight=1, publish_timeout_s=30, delete_delay_s=60
        )
        broker.pause()
        try:
            await relay.send_now(await commit_events(db, 1))
            await asyncio.wait_for(relay.send_now(await commit_events(db, 1, first=1)), 1)
            assert (relay.queued, relay.in_flight) == (1, 1)
        finally:
            broker.resume()
        assert await relay.publish_queued() == 2
        assert await stored_tickets(js, 2) == ["o0", "o1"]
    finally:
        await client.close()


async def test_a_command_s_rows_queue_behind_the_run_loop_s_turn_in_commit_order(
    broker: Any, js: Any, db: Database
) -> None:
    """While the run loop is sending (here its start-up sweep, waiting for acks from a
    stopped broker), a command's rows queue behind its turn instead of overtaking, though the
    window has room: the stream holds the events in commit order."""
    await ensure_streams(js, RuntimeSettings())
    client = await natsconn.connect([broker.url])
    stopping = asyncio.Event()
    relay = outbox.OutboxRelay(
        db, BrokerLink.of(client), publish_timeout_s=30, delete_delay_s=60, sweep_interval_s=60
    )
    running: asyncio.Task[None] | None = None
    try:
        broker.pause()
        try:
            await relay.send_now(await commit_events(db, 1))
            running = asyncio.create_task(relay.run(stopping))  # sweeps o0 again, waits
            await wait_for(_true_when(lambda: relay.in_flight == 2), what="the sweep's send")
            assert relay.sending
            await relay.send_now(await commit_events(db, 1, first=1))
            assert (relay.queued, relay.in_flight) == (1, 2)
        finally:
            broker.resume()
        assert await stored_tickets(js, 2) == ["o0", "o1"]
    finally:
        stopping.set()
        if running is not None:
            await running
        await client.close()


async def stored_tickets(js: Any, count: int) -> list[str]:
    """The ticket ids of the stream's first ``count`` messages, in stream order."""
    await wait_for(lambda: _has(js, count), what=f"{count} messages on the stream")
    stored = [(await js.get_msg(STREAM, seq)).data for seq in range(1, count + 1)]
    return [desk_events.TicketOpened.FromString(data).ticket_id for data in stored]


def _true_when(check: Any) -> Any:
    async def condition() -> bool:
        return bool(check())

    return condition


async def test_a_sweep_of_a_backlog_larger_than_a_batch_sends_each_row_once(
    nc: Any, js: Any, db: Database
) -> None:
    await ensure_streams(js, RuntimeSettings())
    relay = outbox.OutboxRelay(db, BrokerLink.of(nc), batch=4, delete_delay_s=60)
    await commit_events(db, 10)  # a backlog, as after a crash or a broker outage
    assert await relay.sweep(min_age_s=0.0) == 10
    assert relay.duplicates_dropped == 0
    await relay.flush(timeout_s=10)
    assert await outbox_size(db) == 0
    assert await stream_count(js, STREAM, SUBJECT) == 10


async def test_a_row_published_twice_is_stored_once(nc: Any, js: Any, db: Database) -> None:
    await ensure_streams(js, RuntimeSettings())
    relay = outbox.OutboxRelay(db, BrokerLink.of(nc), delete_delay_s=60)
    rows = await commit_events(db, 1)
    relay.submit(rows)
    await relay.publish_queued()
    relay.submit(rows)  # e.g. the sweep and the fast path both sent it
    await relay.publish_queued()
    assert relay.duplicates_dropped == 1
    assert await stream_count(js, STREAM, SUBJECT) == 1


async def _has(js: Any, count: int) -> bool:
    return await stream_count(js, STREAM, SUBJECT) == count


async def _empty(db: Database) -> bool:
    return await outbox_size(db) == 0


async def test_on_the_runtime_s_client_acks_are_taken_inline_and_a_missing_stream_is_an_error(
    broker: Any, js: Any, db: Database
) -> None:
    """The services' connections (RuntimeClient) hand PubAcks to the relay from the read loop,
    with no subscription task: rows are published and settled once each, a duplicate is told
    apart, and a publish no stream takes fails (the row waits for the sweep)."""
    await ensure_streams(js, RuntimeSettings())
    client = await natsconn.connect([broker.url])
    try:
        relay = outbox.OutboxRelay(db, BrokerLink.of(client), delete_delay_s=60)
        rows = await commit_events(db, 6)
        relay.submit(rows)
        assert await relay.publish_queued() == 6
        relay.submit(rows[:2])  # the same events again: the broker drops them as duplicates
        assert await relay.publish_queued() == 2
        assert (relay.published, relay.duplicates_dropped) == (6, 2)
        assert await stream_count(js, STREAM, SUBJECT) == 6
        window = relay._current_window()
        reply_subs = [sub for sid, sub in client._subs.items() if sid in client._inline]
        assert len(reply_subs) == 1 and reply_subs[0]._wait_for_msgs_task is None
        assert window.in_flight == 0
        future = await window.publish("nowhere.at.all", b"x", {"ce-id": "1"}, wait_s=5)
        with pytest.raises(nats.js.errors.NoStreamResponseError):
            await asyncio.wait_for(future, 5)
        assert window.in_flight == 0
    finally:
        await client.close()
