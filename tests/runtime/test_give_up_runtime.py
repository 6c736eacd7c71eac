"""The runtime's bounds, against a real nats-server: a message that kills its process is given
up after a number of deliveries the server counts, and a successor held back behind a gap waits
out its predecessor's retries instead of being dead-lettered."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from choreo import dlq
from choreo.broker import EmbeddedBroker
from choreo.consumer import Ordering, Subscription
from choreo.handling import HandlerContext
from choreo.service import ServiceDefinition, ServiceRuntime
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


async def letters(js: Any) -> list[dlq.DeadLetter]:
    try:
        return await dlq.list_dead_letters(js)
    except Exception:
        return []


async def crashed_or_gave_up(process: subprocess.Popen[bytes], js: Any) -> bool:
    """True when the process was killed (inside the handler), False once a letter is filed."""

    async def over() -> bool:
        return await exited(process) or bool(await letters(js))

    await wait_for(over, timeout=20, what="a crash or a dead letter")
    if process.poll() is None:
        return False
    assert process.returncode == -signal.SIGKILL
    return True


async def test_a_message_that_kills_its_process_is_given_up_after_server_counted_deliveries(
    broker: EmbeddedBroker, js: Any, tmp_path: Path
) -> None:
    db = tmp_path / "probe.db"
    # checkpoints.IN_HANDLER, spelled out: on a runtime without that point nothing crashes.
    env = {"CHOREO_CRASH_AT": "consumer.in_handler", "CHOREO_MAX_DELIVERIES": "2"}
    crashes = 0
    # Each process dies inside the handler; the broker redelivers after ack_wait (2 s) to the
    # next one. A delivery after the first is a suspect, run alone and journaled first: only
    # such runs count as crashes (the first delivery could have been a batch-mate's victim).
    # Two alone runs that never came back make the limit: the fourth delivery is given up
    # without running the handler.
    for attempt in range(6):
        process = start_probe_process(broker, db, **env)
        try:
            if attempt == 0:
                await wait_for(lambda: consumer_ready(js), what="probe consumer")
                await publish_event(
                    js, desk_events.TicketOpened(ticket_id="o-k"), aggregate_id="o-k"
                )
            if await crashed_or_gave_up(process, js):
                crashes += 1
                continue
            break
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(15)
    assert crashes == 3
    (letter,) = await letters(js)
    assert letter.reason == dlq.DELIVERY_LIMIT
    assert letter.deliveries == 4
    assert "handled alone 2 time(s), each time without an outcome" in letter.detail
    assert letter.headers.get("choreo-dlq-alarm") == "true"  # the probe has no give-up handler
    assert probe.effect_counts(db) == {}

    # The letter is filed before the message is acked, and the server applies an ack on its
    # own time: wait for the consumer to have nothing left rather than read it at once.
    async def all_acked() -> bool:
        info = await js.consumer_info(STREAM, DURABLE)
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)

    await wait_for(all_acked, timeout=10, what="the given-up message to be acked")
    info = await js.consumer_info(STREAM, DURABLE)
    # The server bounds deliveries too, above the runtime's own limit and the attempts a
    # give-up may use to compensate (30 by default).
    assert info.config.max_deliver == 2 + 30 + 3


FLAKY_TIMES = 5  # the predecessor fails 5 times, then succeeds on its 6th and last delivery


def ordered_definition(failures: dict[int, int]) -> ServiceDefinition:
    async def record(ctx: HandlerContext, event: object) -> None:
        version = ctx.envelope.aggregate_version
        if failures.get(version, 0) > 0:
            failures[version] -= 1
            raise RuntimeError(f"version {version} fails for now")
        await ctx.tx.execute(
            "INSERT INTO applied_versions (applied_ns, aggregate_id, event_type, version)"
            " VALUES (?, ?, ?, ?)",
            (
                int(asyncio.get_running_loop().time() * 1e9),
                ctx.envelope.aggregate_id,
                ctx.envelope.event_type,
                version,
            ),
        )

    lifecycle = Subscription(
        "probe",
        {
            desk_events.TicketAccepted: record,
            desk_events.TicketDone: record,
            desk_events.TicketCancelled: record,
        },
        name="ticket_lifecycle",
        ordering=Ordering.STRICT,
    )
    return ServiceDefinition(
        name="probe", handlers={}, schema=probe.SCHEMA, extra_subscriptions=[lifecycle]
    )


@pytest.fixture
async def ordered(broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[ServiceRuntime]:
    # The default retry policy: 6 deliveries, backoffs 0.2 .. 3.2 s (6.2 s in all), and the
    # default gap hold settings, which used to give up on a successor after 20 x 0.25 s.
    settings = RuntimeSettings.from_env(
        {
            "CHOREO_NATS_URL": broker.url,
            "CHOREO_DATABASE_URL": f"sqlite:///{tmp_path}/probe.db",
            "CHOREO_FETCH_TIMEOUT_S": "0.2",
            "CHOREO_RELAY_SWEEP_INTERVAL_S": "0.2",
        },
        service="probe",
    )
    runtime = ServiceRuntime(ordered_definition({1: FLAKY_TIMES}), settings)
    await runtime.start()
    yield runtime
    await runtime.stop()


async def test_successors_wait_out_a_predecessor_that_needs_its_retries(
    ordered: ServiceRuntime, js: Any, tmp_path: Path
) -> None:
    await publish_event(js, desk_events.TicketAccepted(ticket_id="o-9"), aggregate_id="o-9")
    await publish_event(js, desk_events.TicketDone(ticket_id="o-9"), aggregate_id="o-9", version=2)
    await publish_event(
        js, desk_events.TicketCancelled(ticket_id="o-9"), aggregate_id="o-9", version=3
    )

    async def all_applied() -> bool:
        return len(probe.applied_versions(tmp_path / "probe.db")) == 3

    await wait_for(all_applied, timeout=30, what="all three versions, in order")
    assert probe.applied_versions(tmp_path / "probe.db") == [
        ("TicketAccepted", 1),
        ("TicketDone", 2),
        ("TicketCancelled", 3),
    ]
    assert await letters(js) == []
    (consumer,) = ordered.consumers
    assert consumer.stats.outcomes.get("retry") == FLAKY_TIMES
    assert consumer.stats.outcomes.get("held", 0) >= 2
    assert await stream_count(js, STREAM) == 3
