"""One saga is one trace: the context travels in the events' traceparent header."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from choreo.broker import EmbeddedBroker
from choreo.envelope import H_TRACEPARENT
from choreo.service import ServiceRuntime
from choreo.settings import RuntimeSettings
from choreo.streamread import read_stream
from choreo.telemetry import configure_tracing
from choreo.testing import publish_event, stream_count, wait_for
from choreo.tracing import current_trace_headers, trace_id_of
from tests.runtime import probe
from tests.runtime.probe_process import consumer_ready, start_probe_process
from tests.testkit import desk_events

pytestmark = pytest.mark.usefixtures("testkit_contracts")


async def test_a_handled_event_and_what_it_emits_stay_in_the_publishers_trace(
    broker: EmbeddedBroker, js: Any, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    assert configure_tracing("probe", exporter)
    settings = RuntimeSettings(
        service="probe",
        nats_url=broker.url,
        database_url=f"sqlite:///{tmp_path}/p.db",
        fetch_timeout_s=0.2,
        relay_sweep_interval_s=0.2,
    )
    service = ServiceRuntime(probe.definition(probe.Behaviour()), settings)
    await service.start()
    try:
        with trace.get_tracer("test").start_as_current_span("OpenTicket") as root:
            traceparent, _ = current_trace_headers()
            await publish_event(
                js,
                desk_events.TicketOpened(ticket_id="t-1"),
                aggregate_id="t-1",
                traceparent=traceparent,
            )
        trace_id = f"{root.get_span_context().trace_id:032x}"

        async def emitted() -> bool:
            return await stream_count(js, "TESTKIT_STOCK") == 1

        await wait_for(emitted, what="ItemsHeld")
        (held,) = await read_stream(js, "TESTKIT_STOCK")
        assert trace_id_of(held.headers) == trace_id
        assert traceparent is not None
        # A new span (the relay's publish) is the parent the consumers will see.
        assert held.headers[H_TRACEPARENT].split("-")[2] != traceparent.split("-")[2]
    finally:
        await service.stop()
    spans = exporter.get_finished_spans()
    consumer = [s for s in spans if s.kind is SpanKind.CONSUMER]
    producer = [s for s in spans if s.kind is SpanKind.PRODUCER]
    assert [f"{s.context.trace_id:032x}" for s in consumer if s.context] == [trace_id]
    assert [f"{s.context.trace_id:032x}" for s in producer if s.context] == [trace_id]
    assert producer[0].parent is not None and consumer[0].context is not None
    assert producer[0].parent.span_id == consumer[0].context.span_id
    assert consumer[0].attributes is not None
    assert consumer[0].attributes["choreo.aggregate_id"] == "t-1"


async def test_without_an_sdk_an_emitted_event_carries_the_trace_it_arrived_with(
    broker: EmbeddedBroker, js: Any, tmp_path: Path
) -> None:
    # The probe runs as its own process with no tracer provider: spans are skipped, and the
    # context must still travel on unchanged (a traced caller's trace is not cut).
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    probe_process = start_probe_process(broker, tmp_path / "probe.db")
    try:
        await wait_for(lambda: consumer_ready(js), what="probe consumer")
        await publish_event(
            js,
            desk_events.TicketOpened(ticket_id="u-1"),
            aggregate_id="u-1",
            traceparent=traceparent,
        )

        async def emitted() -> bool:
            return await stream_count(js, "TESTKIT_STOCK") == 1

        await wait_for(emitted, what="ItemsHeld")
        (held,) = await read_stream(js, "TESTKIT_STOCK")
        assert held.headers[H_TRACEPARENT] == traceparent
    finally:
        probe_process.terminate()
        probe_process.wait(15)
