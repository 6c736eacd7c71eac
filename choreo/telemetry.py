"""Turn tracing on: an OpenTelemetry SDK for this process, so one saga is one trace.

Without this, choreo only uses the OpenTelemetry API (no-op spans, near-zero cost). With it,
every handled event is a CONSUMER span, every relay publish a PRODUCER span, gRPC calls are
SERVER spans (the grpc instrumentation), and the context travels in the events' W3C
``traceparent`` header from service to service.

Export is configured the standard OpenTelemetry way, from the environment:
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), or
  ``OTEL_TRACES_EXPORTER=otlp``: OTLP to a collector, in batches, over the protocol that
  ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL`` names:
  ``http/protobuf`` (the specification's default, a collector's port 4318) or ``grpc`` (port
  4317). The exporter reads the other ``OTEL_EXPORTER_OTLP_*`` variables itself: headers, TLS,
  timeout; the batch processor reads ``OTEL_BSP_*``. Both need the ``otlp`` extra;
- ``OTEL_TRACES_EXPORTER=console``: spans printed to standard output;
- ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``: nothing is exported;
- ``service.name`` is ``OTEL_SERVICE_NAME`` when set, else ``choreo-<service>``;
  ``OTEL_RESOURCE_ATTRIBUTES`` adds attributes.
``CHOREO_TRACE_FILE=/path/spans.jsonl`` (this project's own format, for tests and quick looks)
writes finished spans as JSON lines. Whatever is exported, W3C trace context always travels in
the events' headers (see ``choreo.tracing``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from choreo.errors import ConfigurationError
from choreo.extras import require
from choreo.tracing import forget_recording

_configured = False


class JsonLinesExporter(SpanExporter):
    """Finished spans, one JSON object a line: trace id, span id, parent, name, kind, times."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - long-lived
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            for span in spans:
                context = span.get_span_context()
                parent = span.parent
                self._file.write(
                    json.dumps(
                        {
                            "trace_id": f"{context.trace_id:032x}" if context else "",
                            "span_id": f"{context.span_id:016x}" if context else "",
                            "parent_id": f"{parent.span_id:016x}" if parent else "",
                            "name": span.name,
                            "kind": span.kind.name,
                            "start_ns": span.start_time,
                            "end_ns": span.end_time,
                            "attributes": dict(span.attributes or {}),
                            "service": span.resource.attributes.get("service.name", ""),
                        },
                        default=str,
                    )
                    + "\n"
                )
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def _exporter_from_environment() -> tuple[SpanExporter, bool] | None:
    """The exporter the environment asks for, and whether to batch it; None for none."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    path = env.get("CHOREO_TRACE_FILE")
    if path:
        return JsonLinesExporter(Path(path)), False
    kind = env.get("OTEL_TRACES_EXPORTER", "").split(",")[0].strip().lower()
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter(), False
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if kind == "otlp" or endpoint:
        return _otlp_exporter(otlp_protocol(env)), True
    return None


OTLP_PROTOCOLS = ("http/protobuf", "grpc")


def otlp_protocol(env: Mapping[str, str]) -> str:
    """The OTLP protocol for traces the environment asks for; the specification's default,
    ``http/protobuf``, when it names none."""
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in OTLP_PROTOCOLS:
        raise ConfigurationError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: use one of {', '.join(OTLP_PROTOCOLS)}"
            " (the Python SDK has no http/json exporter)"
        )
    return protocol


def _otlp_exporter(protocol: str) -> SpanExporter:
    # Each exporter reads the OTEL_EXPORTER_OTLP_* variables itself (endpoint, headers, TLS).
    if protocol == "grpc":
        module = require("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "otlp")
    else:
        module = require("opentelemetry.exporter.otlp.proto.http.trace_exporter", "otlp")
    exporter: SpanExporter = module.OTLPSpanExporter()
    return exporter


def configure_tracing(service: str, exporter: SpanExporter | None = None) -> bool:
    """Install an SDK tracer provider for ``service``; returns whether tracing is on.

    Uses ``exporter`` if given, else what the environment asks for (see the module's
    docstring), else leaves tracing off.
    """
    global _configured
    if _configured and exporter is None:
        return True
    batched = False
    if exporter is None:
        chosen = _exporter_from_environment()
        if chosen is None:
            return _configured
        exporter, batched = chosen
    name = os.environ.get("OTEL_SERVICE_NAME") or f"choreo-{service}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    processor = BatchSpanProcessor(exporter) if batched else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    forget_recording()  # spans start with the next event, not a second later
    _configured = True
    return True


def shutdown_tracing() -> None:
    """Flush batched spans before the process exits (a SIGTERM must not lose the last ones)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()
