"""Logs: CHOREO_LOG_FORMAT=json writes one JSON object per line with the service, the logger and,
when known, the trace and the order; repeated warnings are rate-limited with a count."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from choreo.logs import RateLimit, bound, configure_logging

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def lines_of(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_service_logger_trace_and_order(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging(logging.INFO, "payment", stream=out, fmt="json")
    log = logging.getLogger("choreo.test")
    log.info("plain %s", "line")
    # A handled event's span (as choreo.tracing makes it) names the saga.
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("x", attributes={"choreo.correlation_id": "o-9"}) as span:
        log.warning("inside the handler")
        trace_id = format(span.get_span_context().trace_id, "032x")
    with bound(order_id="o-7"):
        log.error("bound by the caller")
    log.info("given per call", extra={"order_id": "o-8"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")

    plain, in_span, with_bound, per_call, failed = lines_of(out)
    assert plain["message"] == "plain line" and plain["level"] == "INFO"
    assert plain["service"] == "payment" and plain["logger"] == "choreo.test"
    assert str(plain["time"]).endswith("+00:00") and "trace_id" not in plain
    assert in_span["trace_id"] == trace_id and in_span["order_id"] == "o-9"
    assert with_bound["order_id"] == "o-7" and with_bound["level"] == "ERROR"
    assert per_call["order_id"] == "o-8"
    assert "ValueError: boom" in str(failed["exception"])


def test_the_same_warning_is_written_once_per_interval_with_a_count() -> None:
    now = [100.0]
    limit = RateLimit(10.0, clock=lambda: now[0])
    out = io.StringIO()
    log = logging.getLogger("choreo.test.ratelimit")
    log.propagate = False
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s %(suppressed)s"))
    handler.addFilter(limit)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        for attempt in range(5):
            log.warning("broker unreachable (%s)", f"attempt {attempt}")
        log.warning("another warning")
        log.info("info is never limited")
        log.info("info is never limited")
        now[0] += 10.0
        log.warning("broker unreachable (%s)", "attempt 5")
    finally:
        log.removeHandler(handler)
    assert out.getvalue().splitlines() == [
        "WARNING broker unreachable (attempt 0) 0",
        "WARNING another warning 0",
        "INFO info is never limited 0",
        "INFO info is never limited 0",
        "WARNING broker unreachable (attempt 5) 4",
    ]


def test_a_service_without_its_broker_logs_json_and_few_lines(tmp_path: Path) -> None:
    """A real `choreo serve` whose broker is unreachable: every stderr line is JSON, and its
    reconnect warnings (several a second) come out once per interval, with a count."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHOREO_", "OTEL_"))}
    env.update(
        CHOREO_LOG_FORMAT="json",
        CHOREO_LOG_RATE_LIMIT_S="2",
        CHOREO_DATA_DIR=str(tmp_path),
        CHOREO_NATS_URL="nats://127.0.0.1:1",
        CHOREO_GRPC_PORT="0",
        CHOREO_METRICS_PORT="0",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "choreo.cli", "serve", "inventory"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    warnings: list[dict[str, object]] = []
    deadline = time.monotonic() + 60
    try:
        assert process.stderr is not None
        # Read until the limiter has visibly held back ten warnings (or give up).
        while time.monotonic() < deadline:
            raw = process.stderr.readline()
            if not raw:
                break
            line = json.loads(raw)  # every line is JSON
            assert line["service"] == "inventory" and line["level"] and line["time"]
            if "NATS connection problem" in str(line["message"]):
                warnings.append(line)
                if sum(int(str(w.get("suppressed", 0))) for w in warnings) >= 10:
                    break
    finally:
        process.kill()
        process.communicate(timeout=10)
    assert warnings, "no reconnect warning at all"
    assert sum(int(str(w.get("suppressed", 0))) for w in warnings) >= 10
    # Several reconnect attempts a second, but at most one line per 2 s interval. The span is
    # taken from the lines' own times, not from when this test read them: a reader that got
    # the first line late (a loaded machine) would otherwise see too short a span. The times
    # are to the millisecond, hence the 0.01 s.
    times = [datetime.fromisoformat(str(w["time"])) for w in warnings]
    span = (times[-1] - times[0]).total_seconds()
    assert len(warnings) <= (span + 0.01) / 2 + 1, [w["time"] for w in warnings]
