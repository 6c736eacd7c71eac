"""OpenTelemetry around publishes and handled events, with context carried in NATS headers.

Only the API is used here: with no SDK configured every span is a no-op and costs next to
nothing. ``choreo.telemetry.configure_tracing`` installs an SDK when a deployment wants traces.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from choreo.envelope import H_TRACEPARENT, H_TRACESTATE, Envelope

_propagator = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("choreo")


@contextmanager
def consume_span(service: str, envelope: Envelope) -> Iterator[Span]:
    """A CONSUMER span for one handled event, child of the span that published it."""
    carrier: dict[str, str] = {}
    if envelope.traceparent:
        carrier[H_TRACEPARENT] = envelope.traceparent
    if envelope.tracestate:
        carrier[H_TRACESTATE] = envelope.tracestate
    parent = _propagator.extract(carrier)
    with _tracer.start_as_current_span(
        f"{envelope.event_type} process",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": envelope.subject,
            "messaging.message.id": envelope.event_id,
            "messaging.consumer.group.name": service,
            "choreo.correlation_id": envelope.correlation_id,
            "choreo.aggregate_id": envelope.aggregate_id,
        },
    ) as span:
        yield span


def current_trace_headers() -> tuple[str | None, str | None]:
    """``traceparent``/``tracestate`` of the current span, for an event being emitted."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get(H_TRACEPARENT), carrier.get(H_TRACESTATE)


def trace_id_of(headers: Mapping[str, str]) -> str | None:
    parts = headers.get(H_TRACEPARENT, "").split("-")
    return parts[1] if len(parts) == 4 else None


@contextmanager
def publish_span(subject: str, headers: dict[str, str]) -> Iterator[dict[str, str]]:
    """A PRODUCER span for one relay publish, child of the span that emitted the event; the
    headers it yields carry this span's context on to the consumers."""
    carrier = {k: headers[k] for k in (H_TRACEPARENT, H_TRACESTATE) if k in headers}
    parent = _propagator.extract(carrier)
    with _tracer.start_as_current_span(
        f"{subject} publish",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "publish",
            "messaging.destination.name": subject,
            "messaging.message.id": headers.get("ce-id", ""),
        },
    ):
        outgoing = dict(headers)
        _propagator.inject(outgoing)
        yield outgoing
