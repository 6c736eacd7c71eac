"""Metrics from OpenTelemetry meters, scraped by Prometheus on ``/metrics`` of every service.

``CHOREO_METRICS_PORT`` (0: off) serves the Prometheus text format on the service's gRPC host.
What a service exports (names as Prometheus shows them):

- ``choreo_consumer_messages_total{consumer, outcome}``: handled, duplicate, stale, held,
  retry, dead_lettered, per durable consumer;
- ``choreo_handler_duration_seconds{consumer}``: how long handling one event took;
- ``choreo_consumer_pending{consumer}`` and ``choreo_consumer_ack_pending{consumer}``: not yet
  delivered, delivered and not yet acked (asked of the broker every few seconds);
- ``choreo_outbox_backlog`` and ``choreo_outbox_oldest_age_seconds``: committed events not yet
  published, and how long the oldest has waited;
- ``choreo_relay_published_total``;
- ``choreo_saga_duration_seconds{outcome}``: placed to final, recorded by the order service;
- ``choreo_rpc_server_requests_total{method, code}`` and
  ``choreo_rpc_server_duration_seconds{method}``;
- ``choreo_alarms_total{service, reason}``: alarm dead letters filed (a step that gave up with
  nothing to compensate it, a compensation that failed, a gap never filled), and
  ``choreo_alarmed_orders{service, reason, order_id}`` (1 for each of the latest
  ``ALARMED_ORDERS_KEPT`` alarmed orders of the process), so every alarmed order is named where
  ``choreo status`` and Prometheus look, whatever the log's rate limit did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource

from choreo.extras import require

log = logging.getLogger(__name__)

REFRESH_EVERY_S = 5.0
# Alarmed orders a process names in its metrics: alarms are rare and each needs an operator,
# but an order id is a label, so their number is bounded.
ALARMED_ORDERS_KEPT = 200


@dataclass
class Alarms:
    """Alarms filed by this process, by service: counts per reason and the latest orders."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (service, reason)
    orders: dict[tuple[str, str, str], None] = field(default_factory=dict)  # insertion order

    def record(self, service: str, reason: str, order_id: str) -> None:
        key = (service, reason)
        self.counts[key] = self.counts.get(key, 0) + 1
        named = (service, reason, order_id or "?")
        self.orders.pop(named, None)
        self.orders[named] = None
        while len(self.orders) > ALARMED_ORDERS_KEPT:
            del self.orders[next(iter(self.orders))]


# One per process: the consumer records an alarm whether or not metrics are served.
ALARMS = Alarms()


def record_alarm(service: str, reason: str, order_id: str) -> None:
    """An alarm dead letter was filed (see choreo.consumer)."""
    ALARMS.record(service, reason, order_id)


@dataclass
class Snapshot:
    """Values read from the broker and the database by :meth:`ServiceMetrics.refresh`."""

    pending: dict[str, int] = field(default_factory=dict)
    ack_pending: dict[str, int] = field(default_factory=dict)
    outbox_backlog: int = 0
    outbox_oldest_created_at: float | None = None


class ServiceMetrics:
    """One service's instruments. Counters the runtime already keeps (consumer outcomes, relay
    publishes) are observed, not double-counted; the rest are recorded as things happen."""

    def __init__(self, service: str, meter: Meter) -> None:
        self.service = service
        self.snapshot = Snapshot()
        self._outcome_sources: list[Callable[[], Iterable[tuple[str, dict[str, int]]]]] = []
        self._published_sources: list[Callable[[], int]] = []
        meter.create_observable_counter(
            "choreo.consumer.messages",
            callbacks=[self._observe_outcomes],
            description="Deliveries finished by each durable consumer, by outcome",
        )
        meter.create_observable_counter(
            "choreo.relay.published",
            callbacks=[self._observe_published],
            description="Outbox events the broker stored",
        )
        meter.create_observable_gauge(
            "choreo.consumer.pending",
            callbacks=[lambda _: self._per_consumer(self.snapshot.pending)],
            description="Messages in the stream not yet delivered to the consumer",
        )
        meter.create_observable_gauge(
            "choreo.consumer.ack_pending",
            callbacks=[lambda _: self._per_consumer(self.snapshot.ack_pending)],
            description="Messages delivered to the consumer and not yet acked",
        )
        meter.create_observable_gauge(
            "choreo.outbox.backlog",
            callbacks=[lambda _: [Observation(self.snapshot.outbox_backlog)]],
            description="Committed events not yet published",
        )
        meter.create_observable_gauge(
            "choreo.outbox.oldest_age",
            unit="s",
            callbacks=[self._observe_oldest_age],
            description="How long the oldest unpublished event has waited",
        )
        self.handler_duration = meter.create_histogram(
            "choreo.handler.duration", unit="s", description="Time to handle one event"
        )
        self.saga_duration = meter.create_histogram(
            "choreo.saga.duration", unit="s", description="Order placed to final state"
        )
        self.rpc_requests = meter.create_counter(
            "choreo.rpc.server.requests", description="gRPC calls served, by method and code"
        )
        self.rpc_duration = meter.create_histogram(
            "choreo.rpc.server.duration", unit="s", description="gRPC call duration"
        )
        meter.create_observable_counter(
            "choreo.alarms",
            callbacks=[self._observe_alarms],
            description="Alarm dead letters filed: an operator must look (choreo dlq list)",
        )
        meter.create_observable_gauge(
            "choreo.alarmed_orders",
            callbacks=[self._observe_alarmed_orders],
            description="The latest alarmed orders of this process (1 each)",
        )

    def observe_outcomes(self, source: Callable[[], Iterable[tuple[str, dict[str, int]]]]) -> None:
        """``source`` yields (consumer name, {outcome: count}) with running totals."""
        self._outcome_sources.append(source)

    def observe_published(self, source: Callable[[], int]) -> None:
        self._published_sources.append(source)

    def _observe_outcomes(self, _: CallbackOptions) -> Iterable[Observation]:
        for source in self._outcome_sources:
            for consumer, outcomes in source():
                for outcome, count in outcomes.items():
                    yield Observation(count, {"consumer": consumer, "outcome": outcome})

    def _observe_published(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(sum(source() for source in self._published_sources))

    def _observe_alarms(self, _: CallbackOptions) -> Iterable[Observation]:
        for (service, reason), count in list(ALARMS.counts.items()):
            if service == self.service:
                yield Observation(count, {"service": service, "reason": reason})

    def _observe_alarmed_orders(self, _: CallbackOptions) -> Iterable[Observation]:
        for service, reason, order_id in list(ALARMS.orders):
            if service == self.service:
                yield Observation(1, {"service": service, "reason": reason, "order_id": order_id})

    def _observe_oldest_age(self, _: CallbackOptions) -> Iterable[Observation]:
        oldest = self.snapshot.outbox_oldest_created_at
        yield Observation(max(0.0, time.time() - oldest) if oldest is not None else 0.0)

    @staticmethod
    def _per_consumer(values: dict[str, int]) -> list[Observation]:
        return [Observation(n, {"consumer": name}) for name, n in values.items()]

    async def refresh_forever(
        self, refresh: Callable[[Snapshot], Awaitable[None]], stopping: asyncio.Event
    ) -> None:
        """Keep the snapshot fresh (the broker and database are asked here, never while
        Prometheus waits for a scrape)."""
        while not stopping.is_set():
            try:
                await refresh(self.snapshot)
            except Exception as exc:  # a dead broker shows in health; metrics keep the last
                log.debug("%s: metrics refresh failed: %r", self.service, exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH_EVERY_S):
                    await stopping.wait()


def start_metrics(service: str, host: str, port: int) -> tuple[ServiceMetrics, int]:
    """Install a meter provider exporting to Prometheus and serve ``/metrics`` on ``port``
    (0 picks a free one); returns the instruments and the port."""
    require("opentelemetry.exporter.prometheus", "prometheus")
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    reader = PrometheusMetricReader()
    provider = MeterProvider(
        resource=Resource.create({"service.name": f"choreo-{service}"}), metric_readers=[reader]
    )
    server, _thread = start_http_server(port, addr=host)
    bound = int(server.server_address[1])
    return ServiceMetrics(service, provider.get_meter("choreo")), bound


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every gRPC call but health checks (polled, and not the API)."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = str(handler_call_details.method)
        if handler is None or method.startswith("/grpc.health.v1.Health/"):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._timed_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._timed_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _record(self, method: str, started: float, context: Any, failed: bool) -> None:
        code = context.code() if hasattr(context, "code") else None
        if code is None:
            code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        self._metrics.rpc_requests.add(1, {"method": method, "code": name})
        self._metrics.rpc_duration.record(time.perf_counter() - started, {"method": method})

    def _timed_unary(self, method: str, behavior: Any) -> Any:
        async def timed(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            failed = True
            try:
                response = await behavior(request, context)
                failed = False
                return response
            finally:
                self._record(method, started, context, failed)

        return timed

    def _timed_stream(self, method: str, behavior: Any) -> Any:
        async def timed(request: Any, context: Any) -> AsyncIterator[Any]:
            started = time.perf_counter()
            failed = True
            try:
                async for response in behavior(request, context):
                    yield response
                failed = False
            finally:
                self._record(method, started, context, failed)

        return timed
