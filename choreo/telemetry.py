"""Turn tracing on: an OpenTelemetry SDK for this process, so one saga is one trace.

Without this, choreo only uses the OpenTelemetry API (no-op spans, near-zero cost). With it,
every handled event is a CONSUMER span, every relay publish a PRODUCER span, gRPC calls are
SERVER spans (the grpc instrumentation), and the context travels in the events' W3C
``traceparent`` header from service to service.

``CHOREO_TRACE_FILE=/path/spans.jsonl`` writes finished spans as JSON lines (one file per
service is simplest); any other exporter (OTLP to a collector) can be passed in code.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

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


def configure_tracing(service: str, exporter: SpanExporter | None = None) -> bool:
    """Install an SDK tracer provider for ``service``; returns whether tracing is on.

    Uses ``exporter`` if given, else ``CHOREO_TRACE_FILE`` if set, else leaves tracing off.
    """
    global _configured
    if exporter is None:
        path = os.environ.get("CHOREO_TRACE_FILE")
        if not path:
            return _configured
        exporter = JsonLinesExporter(Path(path))
    provider = TracerProvider(resource=Resource.create({"service.name": f"choreo-{service}"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = True
    return True
