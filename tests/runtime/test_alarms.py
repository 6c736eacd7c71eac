"""No alarm is lost to the log's rate limit: every ALARM line is written, every alarm is counted
in ``choreo_alarms_total{service, reason}`` and names its order in ``/metrics``, and ``choreo
status`` shows a line per process and reason."""

from __future__ import annotations

import io
import logging
import urllib.request

from choreo import logs, metrics
from choreo.status import ProcessStatus, parse_metrics, status_table


def test_alarm_lines_are_never_rate_limited_while_other_repeats_are() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.TextFormatter())
    handler.addFilter(logs.RateLimit(60.0))
    logger = logging.getLogger("tests.alarms.rate")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for n in range(12):
            logger.error(
                "%s: ALARM dead letter (%s) order %s", "c", "r", f"o-{n}", extra={logs.ALARM: True}
            )
            logger.error("%s: an ordinary error %s", "c", n)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    alarms = [line for line in lines if "ALARM" in line]
    assert [line.rsplit(" ", 1)[1] for line in alarms] == [f"o-{n}" for n in range(12)]
    assert len([line for line in lines if "ordinary" in line]) == 1  # the limit still works


def test_alarms_are_a_prometheus_counter_naming_their_orders_and_a_status_line() -> None:
    service = "alarm-probe"
    service_metrics, port = metrics.start_metrics(service, "127.0.0.1", 0)
    assert service_metrics.service == service
    for order_id in ("o-1", "o-2", "o-3"):
        metrics.record_alarm(service, "retries_exhausted", order_id)
    metrics.record_alarm(service, "compensation_failed", "o-4")
    metrics.record_alarm("someone-else", "retries_exhausted", "o-9")  # not this process's

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    (counted,) = [
        line
        for line in text.splitlines()
        if line.startswith("choreo_alarms_total{") and 'reason="retries_exhausted"' in line
    ]
    assert 'service="alarm-probe"' in counted and counted.endswith(" 3.0")
    scraped = parse_metrics(text)
    assert scraped.alarms == {"retries_exhausted": 3, "compensation_failed": 1}
    assert sorted(scraped.alarmed_orders["retries_exhausted"]) == ["o-1", "o-2", "o-3"]
    assert scraped.alarmed_orders["compensation_failed"] == ["o-4"]

    row = ProcessStatus("payment", "payment", "127.0.0.1:1", "SERVING", 10, 10)
    row.alarms, row.alarmed_orders = scraped.alarms, scraped.alarmed_orders
    table = status_table([row], "nats://127.0.0.1:1", True).splitlines()
    assert "ALARM payment: 1 x compensation_failed: orders o-4" in table
    assert any(
        line.startswith("ALARM payment: 3 x retries_exhausted: orders ") and "o-2" in line
        for line in table
    )


def test_the_alarmed_orders_kept_are_bounded_and_the_count_is_not() -> None:
    alarms = metrics.Alarms()
    for n in range(metrics.ALARMED_ORDERS_KEPT + 5):
        alarms.record("svc", "gap_not_filled", f"o-{n}")
    assert alarms.counts[("svc", "gap_not_filled")] == metrics.ALARMED_ORDERS_KEPT + 5
    assert len(alarms.orders) == metrics.ALARMED_ORDERS_KEPT
    assert ("svc", "gap_not_filled", "o-0") not in alarms.orders  # the oldest went first
    row = ProcessStatus("svc", "svc", "-", "SERVING")
    row.alarms = {"gap_not_filled": metrics.ALARMED_ORDERS_KEPT + 5}
    row.alarmed_orders = {"gap_not_filled": [o for _, _, o in alarms.orders]}
    (line, _hint) = status_table([row], "nats://-", True).splitlines()[-2:]
    assert line.endswith(f"(the latest {metrics.ALARMED_ORDERS_KEPT})")
