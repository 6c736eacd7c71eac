"""Every log line written while an event is handled names its saga and the event, with no
tracer configured: the handler's own lines and the runtime's retry lines, on a real broker."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from choreo.broker import EmbeddedBroker
from choreo.handling import HandlerContext
from choreo.logs import configure_logging
from choreo.service import ServiceDefinition, ServiceRuntime
from choreo.settings import RuntimeSettings
from choreo.testing import publish_event, wait_for
from tests.runtime import probe
from tests.testkit import desk_events

pytestmark = pytest.mark.usefixtures("testkit_contracts")


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    configure_logging(logging.INFO, "probe", stream=out, fmt="json")
    yield out
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


async def test_a_handled_events_log_lines_carry_its_order_and_event_ids(
    broker: EmbeddedBroker, js: Any, tmp_path: Path, json_lines: io.StringIO
) -> None:
    attempts: list[str] = []

    async def on_ticket_opened(ctx: HandlerContext, event: desk_events.TicketOpened) -> None:
        attempts.append(event.ticket_id)
        logging.getLogger("probe.handler").info("holding for %s", event.ticket_id)
        if len(attempts) == 1:
            raise RuntimeError("the warehouse is busy")  # a retry, logged by the runtime

    settings = RuntimeSettings.from_env(
        {
            "CHOREO_NATS_URL": broker.url,
            "CHOREO_DATABASE_URL": f"sqlite:///{tmp_path}/probe.db",
            "CHOREO_FETCH_TIMEOUT_S": "0.2",
            "CHOREO_BACKOFF_BASE_S": "0.05",
        },
        service="probe",
    )
    definition = ServiceDefinition(
        name="probe",
        handlers={desk_events.TicketOpened: on_ticket_opened},
        schema=probe.SCHEMA,
    )
    runtime = ServiceRuntime(definition, settings)
    await runtime.start()
    try:
        envelope = await publish_event(
            js,
            desk_events.TicketOpened(ticket_id="o-logs"),
            aggregate_id="o-logs",
            correlation_id="o-logs",
        )

        async def retried() -> bool:
            return len(attempts) == 2

        await wait_for(retried, timeout=15, what="the retry")
        logging.getLogger("probe.after").info("after the event")
    finally:
        await runtime.stop()

    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    handler_lines = [line for line in lines if line["logger"] == "probe.handler"]
    retry_lines = [line for line in lines if "warehouse is busy" in str(line["message"])]
    (after,) = [line for line in lines if line["logger"] == "probe.after"]
    assert len(handler_lines) == 2 and retry_lines
    for line in [*handler_lines, *retry_lines]:
        assert line["order_id"] == "o-logs", line
        assert line["event_id"] == envelope.event_id, line
    # Outside the handling, nothing is bound.
    assert "order_id" not in after and "event_id" not in after
