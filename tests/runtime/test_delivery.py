"""Exactly-once effects from at-least-once delivery, against a real nats-server."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from choreo import checkpoints, dlq, subjects
from choreo.broker import EmbeddedBroker
from choreo.service import ServiceRuntime
from choreo.settings import RuntimeSettings
from choreo.testing import publish_event, stream_count, wait_for
from tests.runtime import probe
from tests.runtime.probe_process import (
    DURABLE,
    STREAM,
    consumer_ready,
    exited,
    start_probe_process,
)
from tests.testkit import desk_events

pytestmark = pytest.mark.usefixtures("testkit_contracts")

OPENED = "testkit.desk.v1.TicketOpened"
HELD = "testkit.stock.v1.ItemsHeld"
HELD_STREAM = "TESTKIT_STOCK"


def settings_for(broker: EmbeddedBroker, db: Path, **overrides: Any) -> RuntimeSettings:
    base = RuntimeSettings(
        service="probe",
        nats_url=broker.url,
        database_url=f"sqlite:///{db}",
        ack_wait_s=2.0,
        fetch_timeout_s=0.2,
        max_deliveries=4,
        backoff_base_s=0.15,
        relay_sweep_interval_s=0.2,
        gap_hold_max=30,
        gap_hold_delay_s=0.1,
    )
    return base.with_(**overrides)


@pytest.fixture
async def runtime(broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[ServiceRuntime]:
    behaviour = probe.Behaviour()
    service = ServiceRuntime(
        probe.definition(behaviour, ordered=True), settings_for(broker, tmp_path / "probe.db")
    )
    service.definition.resources["behaviour"] = behaviour
    await service.start()
    yield service
    await service.stop()


def ticket_opened(ticket_id: str) -> desk_events.TicketOpened:
    return desk_events.TicketOpened(ticket_id=ticket_id, customer_id="c-1")


async def test_kill_after_commit_before_ack_applies_once_and_publishes_once(
    broker: EmbeddedBroker, js: Any, tmp_path: Path
) -> None:
    db = tmp_path / "probe.db"
    doomed = start_probe_process(broker, db, CHOREO_CRASH_AT=checkpoints.AFTER_COMMIT_BEFORE_ACK)
    try:
        await wait_for(lambda: consumer_ready(js), what="probe consumer")
        await publish_event(js, ticket_opened("o-1"), aggregate_id="o-1")
        await wait_for(lambda: exited(doomed), what="the probe to die after its commit")
        assert doomed.returncode == -signal.SIGKILL
        assert probe.effect_counts(db) == {"o-1": 1}  # committed, never acked
    finally:
        doomed.kill()

    survivor = start_probe_process(broker, db)
    try:

        async def held_published() -> bool:
            return await stream_count(js, HELD_STREAM, HELD) >= 1

        await wait_for(held_published, what="ItemsHeld to be published")

        # The broker redelivers after ack_wait (2s); wait until the consumer has nothing pending.
        async def all_acked() -> bool:
            info = await js.consumer_info(STREAM, DURABLE)
            return info.num_ack_pending == 0 and info.num_pending == 0

        await wait_for(all_acked, timeout=30, what="the redelivery to be acked")
        await asyncio.sleep(0.5)
        assert probe.effect_counts(db) == {"o-1": 1}
        assert await stream_count(js, HELD_STREAM, HELD) == 1
        info = await js.consumer_info(STREAM, DURABLE)
        assert info.delivered.stream_seq == 1 and info.num_redelivered >= 0
    finally:
        survivor.send_signal(signal.SIGTERM)
        survivor.wait(15)


async def test_relay_killed_after_publish_before_mark_is_deduplicated_by_broker(
    broker: EmbeddedBroker, js: Any, tmp_path: Path
) -> None:
    db = tmp_path / "probe.db"
    doomed = start_probe_process(broker, db, CHOREO_CRASH_AT=checkpoints.AFTER_PUBLISH_BEFORE_MARK)
    try:
        await wait_for(lambda: consumer_ready(js), what="probe consumer")
        await publish_event(js, ticket_opened("o-2"), aggregate_id="o-2")
        await wait_for(lambda: exited(doomed), what="the relay to die after publishing")
    finally:
        doomed.kill()
    assert await stream_count(js, HELD_STREAM, HELD) == 1
    assert probe.outbox_rows(db) == 1  # published, but not marked sent

    survivor = start_probe_process(broker, db)
    try:

        async def outbox_empty() -> bool:
            return probe.outbox_rows(db) == 0

        await wait_for(outbox_empty, what="the relay to re-send and mark the row")
        # The re-send carried the same Nats-Msg-Id inside the duplicate window: dropped.
        assert await stream_count(js, HELD_STREAM, HELD) == 1
        assert probe.effect_counts(db) == {"o-2": 1}
    finally:
        survivor.send_signal(signal.SIGTERM)
        survivor.wait(15)


async def test_same_event_with_new_msg_id_is_a_no_op_thanks_to_the_inbox(
    runtime: ServiceRuntime, js: Any, tmp_path: Path
) -> None:
    first = await publish_event(js, ticket_opened("o-3"), aggregate_id="o-3")

    async def held(count: int) -> bool:
        return await stream_count(js, HELD_STREAM, HELD) == count

    await wait_for(lambda: held(1), what="first handling")
    # Beyond the dedup window the broker accepts the same event again under a new msg id.
    await publish_event(
        js,
        ticket_opened("o-3"),
        aggregate_id="o-3",
        event_id=first.event_id,
        msg_id=f"{first.event_id}-later",
    )
    assert await stream_count(js, STREAM) == 2
    consumer = runtime.consumers[0]

    async def duplicate_seen() -> bool:
        return consumer.stats.outcomes.get("duplicate", 0) == 1

    await wait_for(duplicate_seen, what="the duplicate to be recognised")
    assert probe.effect_counts(tmp_path / "probe.db") == {"o-3": 1}
    assert await stream_count(js, HELD_STREAM, HELD) == 1


async def dead_letters(js: Any) -> list[dlq.DeadLetter]:
    try:
        return await dlq.list_dead_letters(js)
    except Exception:
        return []


async def test_poison_lands_in_dlq_with_reasons_and_consumer_keeps_going(
    runtime: ServiceRuntime, js: Any, tmp_path: Path
) -> None:
    subject = f"{OPENED}.o-ok"
    await js.publish(subject, b"\x00\xffgarbage")  # no envelope at all
    valid = await publish_event(js, ticket_opened("o-ok"), aggregate_id="o-ok")
    headers = valid.to_headers()
    await js.publish(
        subject,
        b"\x0a\xff\xff",
        headers={**headers, "Nats-Msg-Id": "bad-body", "ce-id": "bad-body"},
    )
    await js.publish(
        subject,
        b"",
        headers={
            **headers,
            "Nats-Msg-Id": "unknown",
            "ce-id": "unknown",
            "ce-type": "testkit.desk.v1.TicketTeleported",
        },
    )
    await js.publish(
        subject,
        b"",
        headers={
            **headers,
            "Nats-Msg-Id": "v9",
            "ce-id": "v9",
            "ce-type": "testkit.desk.v9.TicketOpened",
        },
    )
    await publish_event(js, ticket_opened("o-deep"), aggregate_id="o-deep", chain_depth=99)
    await publish_event(js, ticket_opened("o-after"), aggregate_id="o-after")

    async def five_letters() -> bool:
        return len(await dead_letters(js)) == 5

    await wait_for(five_letters, what="five dead letters")
    letters = await dead_letters(js)
    assert sorted(letter.reason for letter in letters) == sorted(
        [
            dlq.MISSING_HEADERS,
            dlq.UNDECODABLE,
            dlq.UNKNOWN_TYPE,
            dlq.UNSUPPORTED_VERSION,
            dlq.CHAIN_TOO_DEEP,
        ]
    )
    for letter in letters:
        assert letter.service == "probe"
        assert subjects.event_type_of_subject(letter.subject) == OPENED
        assert letter.detail
    garbage = next(letter for letter in letters if letter.reason == dlq.MISSING_HEADERS)
    assert garbage.body == b"\x00\xffgarbage"

    async def good_ones_handled() -> bool:
        return set(probe.effect_counts(tmp_path / "probe.db")) == {"o-ok", "o-after"}

    await wait_for(good_ones_handled, what="valid events around the poison")


async def test_failing_handler_backs_off_then_dead_letters_and_replay_handles_it(
    runtime: ServiceRuntime, js: Any, tmp_path: Path
) -> None:
    behaviour: probe.Behaviour = runtime.definition.resources["behaviour"]
    behaviour.fail = True
    await publish_event(js, ticket_opened("o-fail"), aggregate_id="o-fail")

    async def one_letter() -> bool:
        return len(await dead_letters(js)) == 1

    await wait_for(one_letter, what="the exhausted message to be dead-lettered")
    (letter,) = await dead_letters(js)
    assert letter.reason == dlq.RETRIES_EXHAUSTED
    assert "probe told to fail" in letter.detail
    assert letter.deliveries == 4
    attempts = behaviour.attempts
    assert len(attempts) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    # Each retry waited at least its own backoff (0.15, 0.3, 0.6 s: they grow). Comparing the
    # measured gaps with each other instead failed when the machine delayed an early retry by
    # more than the 0.15 s between two backoffs.
    scheduled = [runtime.settings.backoff(n) for n in (1, 2, 3)]
    assert scheduled[0] < scheduled[1] < scheduled[2], scheduled
    assert all(gap >= delay for gap, delay in zip(gaps, scheduled, strict=True)), (
        f"retry delays should be at least {scheduled}: {gaps}"
    )
    assert probe.effect_counts(tmp_path / "probe.db") == {}

    behaviour.fail = False
    new_id = await dlq.replay(js, letter.seq)
    assert new_id.endswith(f":replay:{letter.seq}")

    async def handled() -> bool:
        return probe.effect_counts(tmp_path / "probe.db") == {"o-fail": 1}

    await wait_for(handled, what="the replayed event to be handled")


async def test_out_of_order_events_of_one_aggregate_are_applied_in_order(
    runtime: ServiceRuntime, js: Any, tmp_path: Path
) -> None:
    accepted = desk_events.TicketAccepted(ticket_id="o-7")
    done = desk_events.TicketDone(ticket_id="o-7")
    cancelled = desk_events.TicketCancelled(ticket_id="o-7")
    # Versions 1..3 of aggregate o-7 arrive as 3, 1, 2; a stale 1 arrives again at the end.
    await publish_event(js, cancelled, aggregate_id="o-7", version=3)
    await publish_event(js, accepted, aggregate_id="o-7", version=1)
    await publish_event(js, done, aggregate_id="o-7", version=2)
    await publish_event(js, accepted, aggregate_id="o-7", version=1)

    db = tmp_path / "probe.db"

    async def three_applied() -> bool:
        return len(probe.applied_versions(db)) == 3

    await wait_for(three_applied, what="all three versions")
    ordered = next(c for c in runtime.consumers if c.name == "probe__ticket_lifecycle")

    async def stale_seen() -> bool:
        return ordered.stats.outcomes.get("stale", 0) >= 1

    await wait_for(stale_seen, what="the stale version 1 to be recognised")
    assert probe.applied_versions(db) == [
        ("TicketAccepted", 1),
        ("TicketDone", 2),
        ("TicketCancelled", 3),
    ]
    assert ordered.stats.outcomes.get("held", 0) >= 1
    assert ordered.stats.outcomes.get("stale", 0) == 1
