"""CHOREO_NEW_CONSUMER_START: where a durable starts when a service creates it (a real
nats-server), and that a durable which exists keeps its position whatever the setting says."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from nats.js import api
from nats.js.errors import NotFoundError, ServerError

from choreo import subjects
from choreo.broker import EmbeddedBroker
from choreo.consumer import Consumer, StartPosition, Subscription
from choreo.errors import ConfigurationError
from choreo.handling import HandlerContext
from choreo.service import ServiceDefinition, ServiceRuntime, default_registry
from choreo.settings import ConsumerStart, RuntimeSettings
from choreo.store.port import Database
from choreo.streams import ensure_streams
from choreo.testing import publish_event, wait_for
from tests.testkit import desk_events

SERVICE = "newcomer"
STREAM = "TESTKIT_DESK"
DURABLE = subjects.durable_name(SERVICE, "testkit.desk.v1.TicketOpened")
VARIABLE = "CHOREO_NEW_CONSUMER_START"

# The runtime reads the testkit contracts alone (tests/testkit), not the reference system's.
pytestmark = pytest.mark.usefixtures("testkit_contracts")


def settings_for(broker: EmbeddedBroker, tmp_path: Path, **overrides: Any) -> RuntimeSettings:
    base = RuntimeSettings(
        service=SERVICE,
        nats_url=broker.url,
        database_url=f"sqlite:///{tmp_path / 'newcomer.db'}",
        fetch_timeout_s=0.2,
        relay_sweep_interval_s=0.2,
    )
    return base.with_(**overrides)


@dataclass
class Newcomer:
    """A service added to a running system: it records the tickets whose TicketOpened it got."""

    seen: list[str] = field(default_factory=list)

    def definition(self) -> ServiceDefinition:
        async def on_ticket_opened(ctx: HandlerContext, event: desk_events.TicketOpened) -> None:
            self.seen.append(event.ticket_id)

        return ServiceDefinition(
            name=SERVICE, handlers={desk_events.TicketOpened: on_ticket_opened}
        )


@contextlib.asynccontextmanager
async def running(settings: RuntimeSettings) -> AsyncIterator[Newcomer]:
    newcomer = Newcomer()
    runtime = ServiceRuntime(newcomer.definition(), settings)
    await runtime.start()  # its durable exists (created or updated) once this returns
    try:
        yield newcomer
    finally:
        await runtime.stop()


async def store(js: Any, broker: EmbeddedBroker, tmp_path: Path, *order_ids: str) -> None:
    """Publish TicketOpened events as the desk service would (its stream made if need be)."""
    await ensure_streams(js, settings_for(broker, tmp_path), contexts=("testkit.desk",))
    for order_id in order_ids:
        await publish_event(
            js,
            desk_events.TicketOpened(ticket_id=order_id, customer_id="c-1"),
            aggregate_id=order_id,
        )


async def seen(newcomer: Newcomer, *order_ids: str) -> None:
    async def arrived() -> bool:
        return set(order_ids) <= set(newcomer.seen)

    await wait_for(arrived, what=f"{order_ids} to reach the newcomer")


async def settled(js: Any) -> api.ConsumerInfo:
    """The durable's state once it has nothing pending or unacked: what it delivered is final."""

    async def done() -> bool:
        info = await js.consumer_info(STREAM, DURABLE)
        return not info.num_pending and not info.num_ack_pending

    await wait_for(done, what="the durable to have nothing pending")
    info: api.ConsumerInfo = await js.consumer_info(STREAM, DURABLE)
    return info


def delivered(info: api.ConsumerInfo) -> tuple[int, int]:
    """How many deliveries the durable has made, and the stream sequence of its last one."""
    assert info.delivered is not None
    return info.delivered.consumer_seq, info.delivered.stream_seq


def stored_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "stored event(s)" in r.getMessage()]


STORED = [f"o-{i}" for i in range(1, 6)]


async def test_the_default_all_hands_a_new_durable_every_stored_event_and_says_so(
    broker: EmbeddedBroker, js: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="choreo.consumer")
    await store(js, broker, tmp_path, *STORED)
    settings = settings_for(broker, tmp_path)
    assert settings.new_consumer_start == "all"
    async with running(settings) as newcomer:
        await seen(newcomer, *STORED)
        info = await settled(js)
    assert sorted(newcomer.seen) == STORED
    assert info.config.deliver_policy == api.DeliverPolicy.ALL
    (line,) = stored_lines(caplog)  # one line for the durable, not one per event
    assert DURABLE in line and "5 stored event(s)" in line
    assert f"{VARIABLE}=all" in line and "the start of the stream" in line


async def test_new_hands_a_new_durable_only_what_is_published_after_it(
    broker: EmbeddedBroker, js: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="choreo.consumer")
    await store(js, broker, tmp_path, *STORED)
    async with running(settings_for(broker, tmp_path, new_consumer_start="new")) as newcomer:
        await store(js, broker, tmp_path, "later")
        await seen(newcomer, "later")
        info = await settled(js)
    assert newcomer.seen == ["later"]
    # Its one and only delivery was the sixth message: the five stored ones were never sent.
    assert delivered(info) == (1, 6)
    assert info.config.deliver_policy == api.DeliverPolicy.NEW
    assert stored_lines(caplog) == []


async def test_since_a_time_hands_a_new_durable_what_was_published_from_then(
    broker: EmbeddedBroker, js: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="choreo.consumer")
    await store(js, broker, tmp_path, "early-1", "early-2", "early-3")
    # The broker stamps messages with this host's clock; a margin either side of the cut.
    await asyncio.sleep(0.05)
    cut = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await store(js, broker, tmp_path, "late-1", "late-2")
    settings = settings_for(broker, tmp_path, new_consumer_start=f"since:{cut.isoformat()}")
    async with running(settings) as newcomer:
        await seen(newcomer, "late-1", "late-2")
        info = await settled(js)
    assert sorted(newcomer.seen) == ["late-1", "late-2"]
    assert delivered(info) == (2, 5)
    assert info.config.deliver_policy == api.DeliverPolicy.BY_START_TIME
    (line,) = stored_lines(caplog)
    assert "2 stored event(s)" in line and f"{VARIABLE}=since:" in line


@pytest.mark.parametrize(
    ("first", "then", "policy"),
    [
        ("all", "new", api.DeliverPolicy.ALL),
        ("since:1h", "since:1m", api.DeliverPolicy.BY_START_TIME),
        ("new", "all", api.DeliverPolicy.NEW),
    ],
)
async def test_an_existing_durable_keeps_its_position_when_the_setting_changes(
    broker: EmbeddedBroker,
    js: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    first: str,
    then: str,
    policy: api.DeliverPolicy,
) -> None:
    await store(js, broker, tmp_path, "o-1", "o-2", "o-3")
    async with running(settings_for(broker, tmp_path, new_consumer_start=first)) as newcomer:
        if first != "new":
            await seen(newcomer, "o-1", "o-2", "o-3")
        before = await settled(js)
    start_time = before.config.opt_start_time
    await store(js, broker, tmp_path, "while-down-1", "while-down-2")

    caplog.set_level(logging.INFO, logger="choreo.consumer")
    # A restart with another start and another ack wait: the service starts (no refused
    # update), the ack wait follows, the position does not.
    restarted = settings_for(broker, tmp_path, new_consumer_start=then, ack_wait_s=7.0)
    async with running(restarted) as newcomer:
        await seen(newcomer, "while-down-1", "while-down-2")
        after = await settled(js)
    # Neither skipped (what came while it was down arrived) nor replayed from the start.
    assert sorted(newcomer.seen) == ["while-down-1", "while-down-2"]
    assert delivered(after)[0] == delivered(before)[0] + 2
    assert after.config.deliver_policy == policy
    assert after.config.opt_start_time == start_time
    assert after.config.ack_wait == 7.0
    assert stored_lines(caplog) == []  # nothing was created


# --- the setting ----------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("all", ConsumerStart("all")),
        (" New ", ConsumerStart("new")),
        ("since:30m", ConsumerStart("since", ago_s=1800.0)),
        ("since:2h", ConsumerStart("since", ago_s=7200.0)),
        ("SINCE:1.5d", ConsumerStart("since", ago_s=1.5 * 86400)),
        ("since:45s", ConsumerStart("since", ago_s=45.0)),
        (
            "since:2024-05-01T12:00:00Z",
            ConsumerStart("since", at=datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ),
        (
            "since:2024-05-01T14:00:00+02:00",
            ConsumerStart("since", at=datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ),
    ],
)
def test_the_accepted_forms(raw: str, expected: ConsumerStart) -> None:
    settings = RuntimeSettings.from_env({VARIABLE: raw})
    assert settings.new_consumer_start == raw
    assert settings.consumer_start == expected


@pytest.mark.unit
def test_all_is_the_default() -> None:
    assert RuntimeSettings.from_env({}).consumer_start == ConsumerStart("all")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "not one of the accepted forms"),
        ("latest", "not one of the accepted forms"),
        ("2h", "not one of the accepted forms"),
        ("since:", "neither an ISO-8601 time nor a duration"),
        ("since:yesterday", "neither an ISO-8601 time nor a duration"),
        ("since:2h30m", "neither an ISO-8601 time nor a duration"),
        ("since:-2h", "neither an ISO-8601 time nor a duration"),
        ("since:0m", "no time before now"),
        ("since:99999999999d", "before any date"),
        ("since:2024-05-01T12:00:00", "no time zone"),
        ("since:2999-01-01T00:00:00Z", "in the future"),
    ],
)
def test_a_bad_value_fails_naming_the_variable_the_value_and_the_forms(raw: str, why: str) -> None:
    with pytest.raises(ConfigurationError) as failure:
        RuntimeSettings.from_env({VARIABLE: raw})
    message = str(failure.value)
    assert f"{VARIABLE}={raw!r}" in message and why in message
    for form in ("all", "new", "since:<ISO-8601 time", "since:<duration>"):
        assert form in message


@pytest.mark.unit
def test_a_bad_value_given_in_code_fails_at_validation_too() -> None:
    with pytest.raises(ConfigurationError, match=VARIABLE):
        RuntimeSettings(new_consumer_start="since:soon").validate()


@pytest.mark.unit
def test_each_start_becomes_a_deliver_policy_at_creation() -> None:
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert StartPosition.for_new(ConsumerStart("all"), now) == StartPosition()
    assert StartPosition.for_new(ConsumerStart("new"), now) == StartPosition(api.DeliverPolicy.NEW)
    assert StartPosition.for_new(ConsumerStart("since", ago_s=7200.0), now) == StartPosition(
        api.DeliverPolicy.BY_START_TIME, start_time=now - timedelta(hours=2)
    )
    at = datetime(2024, 4, 1, tzinfo=UTC)
    assert StartPosition.for_new(ConsumerStart("since", at=at), now).start_time == at


# --- replicas creating the same durable at once ---------------------------------------------


class RacingJetStream:
    """A durable that a replica creates between this process's look and its add, from another
    start time, so the server refuses the add as an update of the start time."""

    def __init__(self, theirs: api.ConsumerConfig) -> None:
        self.theirs = theirs
        self.looks = 0
        self.sent: list[api.ConsumerConfig] = []

    async def consumer_info(self, stream: str, name: str) -> api.ConsumerInfo:
        self.looks += 1
        if self.looks == 1:
            raise NotFoundError(code=404, err_code=10014, description="consumer not found")
        return api.ConsumerInfo(name, stream, self.theirs, created=datetime.now(UTC))

    async def add_consumer(self, stream: str, config: api.ConsumerConfig) -> api.ConsumerInfo:
        self.sent.append(config)
        if len(self.sent) == 1:
            raise ServerError(code=500, err_code=10012, description="start time can not be updated")
        return api.ConsumerInfo(DURABLE, stream, config, created=datetime.now(UTC))


@pytest.mark.unit
async def test_a_durable_a_replica_created_meanwhile_is_updated_from_its_own_start() -> None:
    theirs = api.ConsumerConfig(
        durable_name=DURABLE,
        deliver_policy=api.DeliverPolicy.BY_START_TIME,
        opt_start_time=datetime(2024, 5, 1, 10, tzinfo=UTC),
    )
    js = RacingJetStream(theirs)
    consumer = Consumer(
        js=js,
        db=cast(Database, None),  # never used: only the durable is made
        subscription=Subscription(SERVICE, Newcomer().definition().handlers),
        registry=default_registry(),
        aggregate_type_of=lambda cls: "order",
        settings=RuntimeSettings(new_consumer_start="since:2h"),
    )
    await consumer._ensure_durable()
    ours, update = js.sent
    assert ours.deliver_policy == api.DeliverPolicy.BY_START_TIME
    assert ours.opt_start_time != theirs.opt_start_time
    assert update.deliver_policy == api.DeliverPolicy.BY_START_TIME
    assert update.opt_start_time == theirs.opt_start_time
