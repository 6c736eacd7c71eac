"""Only the poison is dead-lettered: a message that kills its process on every delivery is
singled out and given up, while the messages delivered in the same batch (whose delivery count
the server raised with every crash) are handled, against a real nats-server and a real process
that SIGKILLs itself."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from choreo import consumer, dlq
from choreo.broker import EmbeddedBroker
from choreo.consumer import Subscription
from choreo.errors import TransientError
from choreo.handling import HandlerContext
from choreo.service import ServiceDefinition, ServiceRuntime
from choreo.settings import RuntimeSettings
from choreo.testing import publish_event, wait_for
from tests.runtime import probe
from tests.runtime.probe_process import consumer_ready, exited, start_probe_process
from tests.testkit import desk_events

pytestmark = pytest.mark.usefixtures("testkit_contracts")

POISON_CUSTOMER = "c-poison"
GOOD_SAME_AGGREGATE = ["o-1", "o-2", "o-3", "o-4"]  # queued behind the poison, in its group
GOOD_OTHER_AGGREGATES = ["o-5", "o-6"]


async def letters(js: Any) -> list[dlq.DeadLetter]:
    try:
        return await dlq.list_dead_letters(js)
    except Exception:
        return []


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


async def test_a_crash_looping_message_is_singled_out_and_its_batch_mates_are_handled(
    broker: EmbeddedBroker, js: Any, tmp_path: Path
) -> None:
    db = tmp_path / "probe.db"
    # A first, harmless process creates the durable consumer; with it stopped, the events
    # wait in the stream, so the crashing process pulls all of them in one batch.
    process = start_probe_process(broker, db)
    try:
        await wait_for(lambda: consumer_ready(js), what="probe consumer")
    finally:
        stop(process)
    await publish_event(
        js,
        desk_events.TicketOpened(ticket_id="o-poison", customer_id=POISON_CUSTOMER),
        aggregate_id="shared",
    )
    for ticket_id in GOOD_SAME_AGGREGATE:
        await publish_event(
            js,
            desk_events.TicketOpened(ticket_id=ticket_id, customer_id="c-1"),
            aggregate_id="shared",
        )
    for ticket_id in GOOD_OTHER_AGGREGATES:
        await publish_event(
            js,
            desk_events.TicketOpened(ticket_id=ticket_id, customer_id="c-1"),
            aggregate_id=ticket_id,
        )
    good = GOOD_SAME_AGGREGATE + GOOD_OTHER_AGGREGATES

    async def settled() -> bool:
        return len(await letters(js)) >= 1 and set(probe.effect_counts(db)) >= set(good)

    env = {"CHOREO_CRASH_ON_CUSTOMER": POISON_CUSTOMER, "CHOREO_MAX_DELIVERIES": "2"}
    crashes = 0
    for _ in range(8):
        process = start_probe_process(broker, db, **env)
        try:

            async def over(running: subprocess.Popen[bytes] = process) -> bool:
                return await exited(running) or await settled()

            await wait_for(over, timeout=30, what="a crash, or every message settled")
            if process.poll() is not None:
                assert process.returncode == -signal.SIGKILL
                crashes += 1
                continue
            break
        finally:
            stop(process)

    # Killed in the batch, then twice when run alone; the fourth delivery is given up.
    assert crashes == 3
    (letter,) = await letters(js)
    assert desk_events.TicketOpened.FromString(letter.body).ticket_id == "o-poison"
    assert letter.reason == dlq.DELIVERY_LIMIT
    assert letter.alarm  # the probe has no give-up handler
    assert "handled alone 2 time(s), each time without an outcome" in letter.detail
    # Every batch-mate was handled, once, though the server delivered it up to four times.
    assert probe.effect_counts(db) == {ticket_id: 1 for ticket_id in good}


async def test_a_suspect_waiting_on_a_slow_call_is_alone_only_for_its_window(
    broker: EmbeddedBroker, js: Any, tmp_path: Path
) -> None:
    """A suspect starts alone, but one still running after ``ALONE_WINDOW_S`` (waiting on a slow
    provider) lets the rest of the process go on, and a crash from then on is not its own."""
    db = tmp_path / "probe.db"
    seen: dict[str, Any] = {"runs": 0, "slow_running": False, "fast_saw_slow_running": None}

    async def slow(ctx: HandlerContext, event: desk_events.TicketOpened) -> None:
        seen["runs"] += 1
        if seen["runs"] == 1:
            raise TransientError("the provider is away")  # handed back: a retry later
        seen["slow_running"] = True
        try:
            await asyncio.sleep(consumer.ALONE_WINDOW_S + 2.0)  # a slow provider call
        finally:
            seen["slow_running"] = False

    async def fast(ctx: HandlerContext, event: desk_events.TicketAccepted) -> None:
        seen["fast_saw_slow_running"] = seen["slow_running"]

    definition = ServiceDefinition(
        name="probe",
        handlers={desk_events.TicketOpened: slow},
        schema=probe.SCHEMA,
        extra_subscriptions=[
            Subscription("probe", {desk_events.TicketAccepted: fast}, name="accepted")
        ],
    )
    settings = RuntimeSettings(
        service="probe",
        nats_url=broker.url,
        database_url=f"sqlite:///{db}",
        fetch_timeout_s=0.2,
        relay_sweep_interval_s=0.2,
        backoff_base_s=1.0,
    )
    first = ServiceRuntime(definition, settings)
    await first.start()
    await publish_event(js, desk_events.TicketOpened(ticket_id="o-slow"), aggregate_id="o-slow")

    async def failed_once() -> bool:
        return bool(seen["runs"] == 1)

    await wait_for(failed_once, what="the first attempt to fail")
    await first.stop()

    # A new process: the redelivery was not handed back by it, so it is a suspect.
    second = ServiceRuntime(definition, settings)
    await second.start()
    try:

        async def slow_started() -> bool:
            return bool(seen["slow_running"])

        await wait_for(slow_started, what="the suspect's second run")
        await asyncio.sleep(consumer.ALONE_WINDOW_S + 0.3)
        assert seen["slow_running"], "the slow call should still be running"
        with sqlite3.connect(db) as connection:
            (running,) = connection.execute(
                "SELECT running FROM choreo_delivery_attempts"
            ).fetchone()
        assert running == 0  # journaled as no longer alone: a crash now is not its own
        await publish_event(
            js, desk_events.TicketAccepted(ticket_id="o-fast"), aggregate_id="o-fast"
        )

        async def fast_handled() -> bool:
            return seen["fast_saw_slow_running"] is not None

        await wait_for(fast_handled, what="the other consumer's event")
        assert seen["fast_saw_slow_running"] is True  # handled while the suspect still ran

        async def slow_done() -> bool:
            return not seen["slow_running"] and seen["runs"] == 2

        await wait_for(slow_done, what="the suspect to finish")
    finally:
        await second.stop()
