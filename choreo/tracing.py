"""OpenTelemetry around publishes and handled events, with context carried in NATS headers.

Only the API is used here. ``choreo.telemetry.configure_tracing`` installs an SDK when a
deployment wants traces. Without one, every span would be a no-op that hands the incoming
context on unchanged, so the span machinery is skipped altogether (it costs some 20 us per
event): envelopes then carry the ``traceparent`` they arrived with, exactly as no-op spans do.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from choreo.envelope import H_TRACEPARENT, H_TRACESTATE, Envelope

_propagator = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("choreo")
_NO_SPAN = nullcontext(trace.INVALID_SPAN)


def recording() -> bool:
    """Whether a tracer provider (an SDK) is installed; checked per call, so installing one
    later takes effect at once."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def consume_span(service: str, envelope: Envelope) -> AbstractContextManager[Span]:
    """A CONSUMER span for one handled event, child of the span that published it."""
    if not recording():
        return _NO_SPAN
    return _consume_span(service, envelope)


@contextmanager
def _consume_span(service: str, envelope: Envelope) -> Iterator[Span]:
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
    if not recording():
        return None, None  # the emitted envelope keeps its cause's trace context
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get(H_TRACEPARENT), carrier.get(H_TRACESTATE)


def trace_id_of(headers: Mapping[str, str]) -> str | None:
    parts = headers.get(H_TRACEPARENT, "").split("-")
    return parts[1] if len(parts) == 4 else None


def publish_span(subject: str, headers: dict[str, str]) -> AbstractContextManager[dict[str, str]]:
    """A PRODUCER span for one relay publish, child of the span that emitted the event; the
    headers it yields carry this span's context on to the consumers."""
    if not recording():
        return nullcontext(headers)
    return _publish_span(subject, headers)


@contextmanager
def _publish_span(subject: str, headers: dict[str, str]) -> Iterator[dict[str, str]]:
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
