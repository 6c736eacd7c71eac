"""Logging for the ``choreo`` command and the services it runs.

- ``CHOREO_LOG_FORMAT=json``: one JSON object per line (``time``, ``level``, ``service``,
  ``logger``, ``message``, and ``trace_id`` / ``order_id`` / ``event_id`` when known), for log
  shippers.
  The default stays the readable one-line text.
- Repeated warnings are rate-limited: a broker that is down makes every reconnect attempt
  warn, and a flood of identical lines hides the one line that matters. The same warning (same
  logger, level and message template) is written at most once per ``CHOREO_LOG_RATE_LIMIT_S``
  seconds (10 by default); the next one written says how many were suppressed in between.
  ``INFO`` and ``DEBUG`` are never suppressed (they are off unless asked for), and neither is
  an alarm (a record logged with ``extra={ALARM: True}``, such as the consumer's "ALARM dead
  letter" line): each names an order an operator must look at, and a suppressed one would
  name it nowhere in the log. Alarms are also counted (``choreo_alarms_total``).

Where a line's trace and order come from: fields bound with :func:`bound` (the consumer binds
the order and event ids of the event it handles), the current OpenTelemetry span (a handled
event's span carries ``choreo.correlation_id``), and the record's own
``extra={"order_id": ...}``, each overriding the one before.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

from choreo.errors import ConfigurationError

FORMATS = ("text", "json")
DEFAULT_RATE_LIMIT_S = 10.0
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The record attribute (``extra={ALARM: True}``) that marks a line the rate limit never drops.
ALARM = "choreo_alarm"

_bound: ContextVar[dict[str, str]] = ContextVar("choreo_log_fields", default={})  # noqa: B039 - never mutated


@contextmanager
def bound(**fields: str) -> Iterator[None]:
    """Add fields (``order_id=...``, ``trace_id=...``) to every JSON line logged inside."""
    token = _bound.set({**_bound.get(), **fields})
    try:
        yield
    finally:
        _bound.reset(token)


def _context_fields(record: logging.LogRecord) -> dict[str, str]:
    fields = dict(_bound.get())
    span = trace.get_current_span()
    context = span.get_span_context()
    if context.is_valid:
        fields["trace_id"] = format(context.trace_id, "032x")
        attributes = getattr(span, "attributes", None) or {}
        if "choreo.correlation_id" in attributes:
            fields["order_id"] = str(attributes["choreo.correlation_id"])
    for name in ("trace_id", "order_id", "event_id"):
        value = getattr(record, name, None)
        if value:
            fields[name] = str(value)
    return {name: value for name, value in fields.items() if value}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_context_fields(record))
        suppressed = getattr(record, "suppressed", 0)
        if suppressed:
            line["suppressed"] = suppressed
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The readable format, saying how many repeats of a line were suppressed."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        suppressed = getattr(record, "suppressed", 0)
        if suppressed:
            text += f" ({suppressed} more like this suppressed)"
        return text


class RateLimit(logging.Filter):
    """At most one record per key (logger, level, message template) per ``interval_s``;
    the next one let through carries ``suppressed``: how many were dropped meanwhile."""

    def __init__(
        self,
        interval_s: float = DEFAULT_RATE_LIMIT_S,
        *,
        min_level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.min_level = min_level
        self._clock = clock
        self._last: dict[tuple[str, int, str], float] = {}
        self._suppressed: dict[tuple[str, int, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level or self.interval_s <= 0 or getattr(record, ALARM, False):
            record.suppressed = 0
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        record.suppressed = self._suppressed.pop(key, 0)
        return True


def _rate_limit_s() -> float:
    raw = os.environ.get("CHOREO_LOG_RATE_LIMIT_S", "")
    try:
        return float(raw) if raw else DEFAULT_RATE_LIMIT_S
    except ValueError:
        return DEFAULT_RATE_LIMIT_S  # logging must come up whatever; the default is safe


def log_format() -> str:
    chosen = os.environ.get("CHOREO_LOG_FORMAT", "text").strip().lower() or "text"
    if chosen not in FORMATS:
        raise ConfigurationError(f"CHOREO_LOG_FORMAT={chosen!r}: use text or json")
    return chosen


def configure_logging(
    level: int, service: str, *, stream: TextIO | None = None, fmt: str | None = None
) -> logging.Handler:
    """Install one handler on the root logger (replacing earlier ones); returns it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    chosen = fmt or log_format()
    handler.setFormatter(JsonFormatter(service) if chosen == "json" else TextFormatter())
    handler.addFilter(RateLimit(_rate_limit_s()))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
