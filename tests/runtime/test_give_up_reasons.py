"""A give-up's dead letter says what happened, with the true attempt count, against a real
nats-server: retries exhausted stays the reason while the compensation is retried (also across
a restart), a compensation that runs out says so and why, and no letter claims a crash that
never happened."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from choreo import consumer, dlq, logs, metrics
from choreo.broker import EmbeddedBroker
from choreo.errors import TransientError
from choreo.handling import GaveUp, HandlerContext
from choreo.service import ServiceDefinition, ServiceRuntime
from choreo.settings import RuntimeSettings
from choreo.testing import publish_event, wait_for
from tests.runtime import probe
from tests.testkit import desk_events, stock_events

pytestmark = pytest.mark.usefixtures("testkit_contracts")


@dataclass
class Script:
    """How the probe's step behaves: its handler always fails (the provider is down); its
    give-up handler fails ``compensation_failures`` times, then emits the failure event."""

    compensation_failures: int = 0
    handler_runs: int = 0
    give_ups: list[GaveUp] = field(default_factory=list)


def give_up_definition(script: Script) -> ServiceDefinition:
    async def charge(ctx: HandlerContext, event: desk_events.TicketOpened) -> None:
        script.handler_runs += 1
        raise TransientError(f"charging ticket {event.ticket_id}: the gateway is unavailable")

    async def give_up(ctx: HandlerContext, event: desk_events.TicketOpened, why: GaveUp) -> None:
        script.give_ups.append(why)
        if len(script.give_ups) <= script.compensation_failures:
            raise TransientError(f"voiding ticket {event.ticket_id}: the gateway is unavailable")
        ctx.emit(
            stock_events.HoldFailed(ticket_id=event.ticket_id),
            aggregate_id=event.ticket_id,
        )

    return ServiceDefinition(
        name="probe",
        handlers={desk_events.TicketOpened: charge},
        give_ups={desk_events.TicketOpened: give_up},
        schema=probe.SCHEMA,
    )


def settings_for(broker: EmbeddedBroker, db: Path, **overrides: Any) -> RuntimeSettings:
    return RuntimeSettings(
        service="probe",
        nats_url=broker.url,
        database_url=f"sqlite:///{db}",
        ack_wait_s=2.0,
        fetch_timeout_s=0.2,
        relay_sweep_interval_s=0.2,
        max_deliveries=2,
        backoff_base_s=0.05,
        backoff_max_s=0.2,
    ).with_(**overrides)


Start = Callable[..., Awaitable[ServiceRuntime]]


@pytest.fixture
async def start(broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[Start]:
    running: list[ServiceRuntime] = []

    async def started(script: Script, **overrides: Any) -> ServiceRuntime:
        runtime = ServiceRuntime(
            give_up_definition(script), settings_for(broker, tmp_path / "probe.db", **overrides)
        )
        await runtime.start()
        running.append(runtime)
        return runtime

    yield started
    for runtime in running:
        if runtime.consumers:
            await runtime.stop()


async def letters(js: Any) -> list[dlq.DeadLetter]:
    try:
        return await dlq.list_dead_letters(js)
    except Exception:
        return []


async def one_letter(js: Any) -> dlq.DeadLetter:
    async def filed() -> bool:
        return len(await letters(js)) == 1

    await wait_for(filed, timeout=30, what="the give-up's dead letter")
    (letter,) = await letters(js)
    return letter


async def test_a_compensation_retried_keeps_the_reason_and_counts_true_attempts(
    start: Start, js: Any
) -> None:
    script = Script(compensation_failures=2)
    await start(script)
    await publish_event(
        js, desk_events.TicketOpened(ticket_id="o-r", customer_id="c-1"), aggregate_id="o-r"
    )

    letter = await one_letter(js)
    assert (letter.reason, letter.compensated, letter.alarm) == (
        dlq.RETRIES_EXHAUSTED,
        True,
        False,
    )
    # Two handler runs (max_deliveries), the second one's delivery the first try to
    # compensate, then two more: four deliveries, and the letter says two attempts, what they
    # met, and when compensating worked.
    assert script.handler_runs == 2
    assert letter.deliveries == 4
    assert "after 2 attempts" in letter.detail
    assert "the gateway is unavailable" in letter.detail
    assert "compensated at try 3" in letter.detail
    assert "crashed" not in letter.detail and "without an outcome" not in letter.detail
    # Every call of the give-up handler was told the same, true reason.
    assert [why.reason for why in script.give_ups] == [dlq.RETRIES_EXHAUSTED] * 3
    assert {why.attempts for why in script.give_ups} == {2}


async def test_a_compensation_that_runs_out_raises_an_alarm_saying_why(
    start: Start, js: Any, caplog: pytest.LogCaptureFixture
) -> None:
    script = Script(compensation_failures=1000)
    await start(script, give_up_attempts=3)
    await publish_event(
        js, desk_events.TicketOpened(ticket_id="o-a", customer_id="c-1"), aggregate_id="o-a"
    )

    letter = await one_letter(js)
    assert letter.reason == consumer.COMPENSATION_FAILED
    assert letter.alarm and not letter.compensated
    assert letter.detail.startswith("retries_exhausted: after 2 attempts:")
    assert "compensating failed 3 time(s)" in letter.detail
    assert "voiding ticket o-a: the gateway is unavailable" in letter.detail
    assert "crashed" not in letter.detail
    assert len(script.give_ups) == 3
    # Counted for the metric and `choreo status`, naming the order.
    assert metrics.ALARMS.counts.get(("probe", consumer.COMPENSATION_FAILED), 0) >= 1
    assert ("probe", consumer.COMPENSATION_FAILED, letter.correlation_id) in metrics.ALARMS.orders
    # Its log line names the order and is marked, so the rate limit never drops it.
    (line,) = [r for r in caplog.records if "ALARM dead letter" in r.getMessage()]
    assert getattr(line, logs.ALARM, False) is True
    assert letter.correlation_id in line.getMessage()


async def test_a_restart_during_the_compensation_keeps_the_reason_and_the_attempts(
    start: Start, js: Any
) -> None:
    failing = Script(compensation_failures=1000)
    first = await start(failing)
    await publish_event(
        js, desk_events.TicketOpened(ticket_id="o-s", customer_id="c-1"), aggregate_id="o-s"
    )

    async def compensating() -> bool:
        return len(failing.give_ups) >= 2

    await wait_for(compensating, what="the give-up to fail twice")
    await first.stop()
    assert failing.handler_runs == 2

    # A new process (its memory empty) gets the next delivery: the journal tells it that the
    # step gave up because retries were exhausted, so it compensates, without a handler run.
    healed = Script()
    await start(healed)
    letter = await one_letter(js)
    assert (letter.reason, letter.compensated) == (dlq.RETRIES_EXHAUSTED, True)
    assert healed.handler_runs == 0
    assert [why.reason for why in healed.give_ups] == [dlq.RETRIES_EXHAUSTED]
    assert "after 2 attempts" in letter.detail
    assert "crashed" not in letter.detail and "without an outcome" not in letter.detail
