"""A relay that never wedges, against a real nats-server: rows it can never publish are parked
(and the rows behind them flow), publish slots always come back, a connection the server closed
is re-created, and an outage of any length ends with every committed row published."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

from choreo import cli, dlq, outbox, subjects
from choreo.broker import BrokerLink, EmbeddedBroker
from choreo.envelope import Envelope
from choreo.service import ServiceRuntime
from choreo.settings import RuntimeSettings
from choreo.store.port import Database
from choreo.store.schema import runtime_schema
from choreo.store.sqlite import SqliteDatabase
from choreo.streams import ensure_streams
from choreo.testing import envelope_for, publish_event, stream_count, wait_for
from tests.runtime import probe
from tests.testkit import desk_events, stock_events

pytestmark = pytest.mark.usefixtures("testkit_contracts")

STREAM = "TESTKIT_DESK"
SUBJECT = "testkit.desk.v1.TicketOpened"
HELD = "testkit.stock.v1.ItemsHeld"
MAX_PAYLOAD = 1024 * 1024  # EmbeddedBroker's max_payload


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = SqliteDatabase(tmp_path / "relay.db")
    await database.migrate(runtime_schema(database.dialect))
    yield database
    await database.close()


def ticket_opened(n: int) -> tuple[Envelope, bytes]:
    message = desk_events.TicketOpened(ticket_id=f"o{n}", customer_id="c1")
    return envelope_for(message, aggregate_id=f"o{n}"), message.SerializeToString()


async def commit(db: Database, events: list[tuple[Envelope, bytes]]) -> list[outbox.OutboxRow]:
    async with db.transaction() as tx:
        return [await outbox.enqueue(tx, envelope, body) for envelope, body in events]


async def commit_normal(db: Database, first: int, count: int) -> list[outbox.OutboxRow]:
    return await commit(db, [ticket_opened(n) for n in range(first, first + count)])


def oversized_by_headers(envelope: Envelope) -> tuple[Envelope, bytes]:
    """A body under max_payload that goes over it with the event's own headers."""
    header_bytes = outbox.header_block_size(envelope.to_headers())
    body = b"x" * (MAX_PAYLOAD - header_bytes + 100)
    assert len(body) < MAX_PAYLOAD
    return envelope, body


async def stop_relay(stopping: asyncio.Event, *running: asyncio.Task[None]) -> None:
    """Stop relay tasks, bounded even if one is wedged (a failing test must not hang)."""
    stopping.set()
    _, pending = await asyncio.wait(running, timeout=10)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=2)
        raise AssertionError("a relay did not stop within 10 s: wedged")
    for task in running:
        task.result()


async def outbox_size(db: Database) -> int:
    async with db.read() as tx:
        row = await tx.fetchone("SELECT COUNT(*) FROM choreo_outbox")
    assert row is not None
    return int(row[0])


async def tickets_on_stream(js: Any) -> int:
    return await stream_count(js, STREAM, SUBJECT)


async def test_a_row_over_max_payload_is_parked_with_its_reason_and_the_rows_behind_flow(
    nc: Any, js: Any, db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await ensure_streams(js, RuntimeSettings())
    relay = outbox.OutboxRelay(db, BrokerLink.of(nc), service="desk", delete_delay_s=60)
    envelope, _ = ticket_opened(0)
    (big,) = await commit(db, [(envelope, b"x" * (MAX_PAYLOAD + 10))])  # the oldest row
    await commit_normal(db, 1, 5)

    for _ in range(3):  # every sweep, as the running relay would do
        await relay.sweep(min_age_s=0.0)
    await relay.delete_published()

    assert await tickets_on_stream(js) == 5
    assert await outbox_size(db) == 0
    assert relay.in_flight == 0
    assert nc.is_connected
    (parked,) = await dlq.list_parked(db)
    assert parked.event_id == big.event_id
    assert parked.reason == dlq.TOO_LARGE
    assert "max_payload 1048576" in parked.detail
    assert parked.body == big.body and parked.notice_filed
    # The notice in the DLQ stream names the reason, service, event id and subject.
    (letter,) = await dlq.list_dead_letters(js)
    assert letter.is_parked_notice and letter.body == b""
    assert (letter.reason, letter.service) == (dlq.TOO_LARGE, "desk")
    assert subjects.event_type_of_subject(letter.subject) == SUBJECT
    assert letter.headers["ce-id"] == big.event_id
    with pytest.raises(dlq.ParkedRowNotice, match="unpark"):
        await dlq.replay(js, letter.seq)

    # Visible through `choreo dlq`: the notice in `list`, the row in `parked`.
    db_url = f"sqlite:///{tmp_path / 'relay.db'}"
    assert (
        await asyncio.to_thread(cli.main, ["dlq", "list", "--nats-url", nc.connected_url.geturl()])
        == 0
    )
    assert await asyncio.to_thread(cli.main, ["dlq", "parked", "--database-url", db_url]) == 0
    out = capsys.readouterr().out
    assert dlq.TOO_LARGE in out and big.event_id in out and "1 parked row(s)" in out

    # Replayable: unpark puts it back in the outbox; still too large, so parked again.
    assert (
        await asyncio.to_thread(cli.main, ["dlq", "unpark", big.event_id, "--database-url", db_url])
        == 0
    )
    assert await outbox_size(db) == 1 and await dlq.list_parked(db) == []
    await relay.sweep(min_age_s=0.0)
    assert [row.event_id for row in await dlq.list_parked(db)] == [big.event_id]
    assert await outbox_size(db) == 0


async def test_a_row_whose_headers_push_it_over_max_payload_is_parked_not_sent(
    nc: Any, js: Any, db: Database
) -> None:
    """Before: nats-py checks the body alone, the server counts headers too and closes the
    connection (`maximum payload exceeded`), and nats-py never reconnects."""
    await ensure_streams(js, RuntimeSettings())
    relay = outbox.OutboxRelay(db, BrokerLink.of(nc), delete_delay_s=0.0, sweep_interval_s=0.2)
    envelope, _ = ticket_opened(0)
    stopping = asyncio.Event()
    running = asyncio.create_task(relay.run(stopping))
    try:
        (big,) = await commit(db, [oversized_by_headers(envelope)])
        relay.submit([big])  # the fast path, right after the commit
        relay.submit(await commit_normal(db, 1, 5))  # rows behind it
        await wait_for(lambda: _on_stream(js, 5), timeout=10, what="the 5 rows behind it")
        await wait_for(lambda: _size_is(db, 0), timeout=10, what="an empty outbox")
    finally:
        await stop_relay(stopping, running)
    assert nc.is_connected and not nc.is_closed
    (parked,) = await dlq.list_parked(db)
    assert (parked.event_id, parked.reason) == (big.event_id, dlq.TOO_LARGE)
    assert relay.in_flight == 0


async def test_a_row_with_a_subject_the_server_cannot_read_is_parked_not_sent(
    nc: Any, js: Any, db: Database
) -> None:
    """A subject past the server's 4 KiB control line makes it close the connection."""
    await ensure_streams(js, RuntimeSettings())
    relay = outbox.OutboxRelay(db, BrokerLink.of(nc), delete_delay_s=60)
    envelope, body = ticket_opened(0)
    async with db.transaction() as tx:
        await tx.execute(
            outbox.ENQUEUE_SQL,
            (envelope.event_id, SUBJECT + "x" * 5000, json.dumps(envelope.to_headers()), body, 0),
        )
    await commit_normal(db, 1, 3)
    await relay.sweep(min_age_s=0.0)
    await relay.delete_published()
    assert nc.is_connected
    assert await tickets_on_stream(js) == 3
    (parked,) = await dlq.list_parked(db)
    assert (parked.event_id, parked.reason) == (envelope.event_id, dlq.REFUSED)
    (letter,) = await dlq.list_dead_letters(js)  # its notice, on a subject the server reads
    assert letter.headers["ce-id"] == envelope.event_id and letter.reason == dlq.REFUSED


async def test_a_publish_that_cannot_be_sent_gives_its_slot_back(
    broker: EmbeddedBroker, js: Any
) -> None:
    """nats-py's publish_async keeps its pending slot when the send raises (here: the
    reconnect buffer is full); after 4000 of those it blocks for good. The window does not."""
    await ensure_streams(js, RuntimeSettings())
    client = await nats.connect(
        broker.url, pending_size=4096, max_reconnect_attempts=-1, reconnect_time_wait=0.1
    )
    try:
        window = outbox.PublishWindow(client, limit=8)
        assert (await (await window.publish(SUBJECT, b"ok", {}, 1.0))).seq >= 1
        broker.kill()
        await wait_for(_not_connected(client), timeout=5, what="the client to see the outage")
        failures = 0
        buffered = []
        for _ in range(50):  # far more than the 8 slots
            try:
                buffered.append(await window.publish(SUBJECT, b"x" * 500, {}, 1.0))
            except nats.errors.OutboundBufferLimitError:
                failures += 1
        assert failures > 40
        assert window.in_flight == len(buffered) <= 8  # only the ones really in the buffer
        window.give_back(buffered)  # what the relay does when their time is up
        assert window.in_flight == 0
    finally:
        with contextlib.suppress(ConnectionError):  # the buffered bytes cannot be sent
            await client.close()
        broker.start()  # for the fixtures' own connection


async def test_acks_that_never_come_time_out_and_give_their_slots_back(
    broker: EmbeddedBroker, nc: Any, js: Any, db: Database
) -> None:
    await ensure_streams(js, RuntimeSettings())
    relay = outbox.OutboxRelay(
        db, BrokerLink.of(nc), publish_timeout_s=0.3, delete_delay_s=0.0, max_in_flight=16
    )
    broker.pause()  # frozen: the connection looks fine, nothing answers
    try:
        for n in range(5):
            relay.submit(await commit_normal(db, n * 10, 10))
            assert await relay.publish_queued() == 0
            assert relay.in_flight == 0
    finally:
        broker.resume()
    await relay.flush(timeout_s=10)
    assert await outbox_size(db) == 0
    assert await tickets_on_stream(js) == 50


async def test_an_outage_far_longer_than_the_reconnect_buffer_recovers_by_itself(
    broker: EmbeddedBroker, db: Database
) -> None:
    """The broker is down while the service commits hundreds of times what nats-py can buffer,
    each commit handed to the relay (before: every publish then raised OutboundBufferLimitError
    and kept one of nats-py's 4000 pending slots, so the relay was wedged when the broker came
    back). Once it is back (same port, same store) every committed row is published."""
    pending_size = 2048
    client = await nats.connect(
        broker.url,
        pending_size=pending_size,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
    )
    js = client.jetstream()
    await ensure_streams(js, RuntimeSettings())
    relay = outbox.OutboxRelay(
        db, BrokerLink.of(client), sweep_interval_s=0.2, publish_timeout_s=0.2
    )
    stopping = asyncio.Event()
    running = asyncio.create_task(relay.run(stopping))
    try:
        relay.submit(await commit_normal(db, 0, 10))
        await wait_for(lambda: _on_stream(js, 10), timeout=10, what="rows before the outage")
        broker.kill()
        committed_bytes = 0
        for n in range(10, 4510):  # one commit per row, each taken by the relay at once
            rows = await commit_normal(db, n, 1)
            committed_bytes += len(rows[0].body) + outbox.header_block_size(rows[0].headers)
            relay.submit(rows)
            await _until_taken(relay)
        assert committed_bytes > 500 * pending_size
        await asyncio.sleep(1.0)  # sweeps run against the dead broker meanwhile
        broker.start()
        await wait_for(lambda: _size_is(db, 0), timeout=30, what="the outbox to drain")
        assert await tickets_on_stream(js) == 4510
        assert relay.in_flight == 0
    finally:
        await stop_relay(stopping, running)
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(client.close(), 5)


async def _until_taken(relay: outbox.OutboxRelay, timeout: float = 5.0) -> None:
    """Let the relay take the rows just submitted (a tight loop: thousands of them)."""
    deadline = time.monotonic() + timeout
    while relay.queued:
        if time.monotonic() > deadline:
            raise AssertionError(f"the relay took no rows for {timeout}s: wedged")
        await asyncio.sleep(0)


async def test_a_connection_the_server_closed_is_re_created_and_the_service_carries_on(
    broker: EmbeddedBroker, js: Any, tmp_path: Path
) -> None:
    settings = RuntimeSettings(
        service="probe",
        nats_url=broker.url,
        database_url=f"sqlite:///{tmp_path / 'probe.db'}",
        fetch_timeout_s=0.2,
        relay_sweep_interval_s=0.2,
    )
    runtime = ServiceRuntime(probe.definition(probe.Behaviour()), settings)
    await runtime.start()
    try:
        await publish_event(js, desk_events.TicketOpened(ticket_id="before"), aggregate_id="before")
        await wait_for(lambda: _count(js, "TESTKIT_STOCK", HELD, 1), what="first reply")
        # Headers push this over max_payload: the server closes the connection for good.
        first = runtime.nc
        await first.publish("choreo.test.big", b"x" * (MAX_PAYLOAD - 10), headers={"h": "y" * 100})
        await wait_for(_closed(first), timeout=5, what="the server to close the connection")
        await wait_for(lambda: _differs(runtime, first), timeout=10, what="a new connection")
        # Consumers re-bind to the new connection, and the relay publishes on it.
        await publish_event(js, desk_events.TicketOpened(ticket_id="after"), aggregate_id="after")
        await wait_for(
            lambda: _count(js, "TESTKIT_STOCK", HELD, 2), timeout=20, what="second reply"
        )
    finally:
        await runtime.stop()


async def _on_stream(js: Any, count: int) -> bool:
    return await tickets_on_stream(js) == count


async def _count(js: Any, stream: str, subject: str, count: int) -> bool:
    return await stream_count(js, stream, subject) == count


async def _size_is(db: Database, count: int) -> bool:
    return await outbox_size(db) == count


def _not_connected(client: Any) -> Any:
    async def check() -> bool:
        return not client.is_connected

    return check


def _closed(client: Any) -> Any:
    async def check() -> bool:
        return bool(client.is_closed)

    return check


async def _differs(runtime: ServiceRuntime, old: Any) -> bool:
    return runtime.nc is not old and bool(runtime.nc.is_connected)


async def test_a_command_s_event_is_on_the_wire_before_the_command_returns(
    broker: EmbeddedBroker, js: Any, tmp_path: Path
) -> None:
    """A unit of work (what a gRPC command runs in) sends its events before it hands back to
    the command, so they leave before the command's answer: nothing waits in the relay's
    queue or the client's buffer when it returns."""
    settings = RuntimeSettings(
        service="probe",
        nats_url=broker.url,
        database_url=f"sqlite:///{tmp_path / 'probe.db'}",
        relay_sweep_interval_s=60,  # the run loop stays parked after its start-up sweep
    )
    runtime = ServiceRuntime(probe.definition(probe.Behaviour()), settings)
    await runtime.start()
    try:
        await wait_for(lambda: _idle(runtime.relay), what="the relay to park")
        async with runtime.unit_of_work(correlation_id="cmd-1") as uow:
            uow.emit(stock_events.ItemsHeld(ticket_id="cmd-1", hold_id="h1"), aggregate_id="cmd-1")
        relay = runtime.relay
        assert (relay.queued, relay.in_flight + relay.published) == (0, 1)
        assert runtime.nc.pending_data_size == 0
        await wait_for(lambda: _count(js, "TESTKIT_STOCK", HELD, 1), what="the event stored")
    finally:
        await runtime.stop()


async def _idle(relay: outbox.OutboxRelay) -> bool:
    return not relay.sending and not relay.queued
