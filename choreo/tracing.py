"""OpenTelemetry around publishes and handled events, with context carried in NATS headers.

Only the API is used here. ``choreo.telemetry.configure_tracing`` installs an SDK when a
deployment wants traces. Without one, every span would be a no-op that hands the incoming
context on unchanged, so the span machinery is skipped altogether (it costs some 20 us per
event): envelopes then carry the ``traceparent`` they arrived with, exactly as no-op spans do.
A gRPC command (``PlaceOrder``) has no envelope to arrive with: :class:`TraceContextInterceptor`
keeps the caller's ``traceparent`` metadata for the call, so the first event of a saga
continues the client's trace even in a service that exports nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from choreo.envelope import H_TRACEPARENT, H_TRACESTATE, Envelope

_propagator = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("choreo")
_NO_SPAN = nullcontext(trace.INVALID_SPAN)
# The W3C trace context a gRPC caller sent, for the duration of its call (no SDK installed).
_incoming_call_trace: ContextVar[tuple[str | None, str | None]] = ContextVar(
    "choreo_incoming_call_trace", default=(None, None)
)


_RECHECK_S = 1.0
_recording = (False, -_RECHECK_S)  # (answer, when it was found)


def recording() -> bool:
    """Whether a tracer provider (an SDK) is installed. Looked up at most once a second (the
    lookup reads the environment, and this runs several times per event); one installed later
    takes effect within that second."""
    global _recording
    answer, found_at = _recording
    now = time.monotonic()
    if now - found_at < _RECHECK_S:
        return answer
    answer = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    _recording = (answer, now)
    return answer


def forget_recording() -> None:
    """Look the provider up again on the next call (after installing one)."""
    global _recording
    _recording = (False, -_RECHECK_S)


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
        # A handler's envelope keeps its cause's trace context; a command takes its caller's.
        return _incoming_call_trace.get()
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


class TraceContextInterceptor(grpc.aio.ServerInterceptor):
    """Keeps a caller's ``traceparent``/``tracestate`` metadata for the call, so that events a
    command emits continue the caller's trace without an SDK. (With an SDK installed, the
    OpenTelemetry gRPC instrumentation's server span does this, and more.)"""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        metadata: Any = handler_call_details.invocation_metadata or ()
        found = {key: value for key, value in metadata if key in (H_TRACEPARENT, H_TRACESTATE)}
        traceparent = found.get(H_TRACEPARENT)
        if traceparent and not recording():
            _incoming_call_trace.set((str(traceparent), found.get(H_TRACESTATE)))
        return await continuation(handler_call_details)
