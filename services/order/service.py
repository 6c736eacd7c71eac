"""The order service's composition root: catalog, handlers, schema, gRPC servicer, and the
saga deadline (a periodic scan that cancels orders not final in time)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

import grpc

from choreo.errors import ConfigurationError
from choreo.service import BackgroundTask, ServiceDefinition, ServiceRuntime
from choreo.settings import RuntimeSettings
from services import payment_token
from services.catalog import CatalogError, load_catalog
from services.order import api, domain, handlers, store
from services.settings import SagaSettings

GRPC_SERVICE = "shop.order.v1.OrderService"
DEADLINE_BATCH = 100

log = logging.getLogger(__name__)


async def cancel_overdue(service: ServiceRuntime, deadline_s: float, now: datetime) -> int:
    """Cancel every order that is not final ``deadline_s`` after it was placed; each in its own
    unit of work (state and OrderCancelled commit together). Returns how many it cancelled."""
    async with service.db.read() as tx:
        candidates = await store.overdue_order_ids(
            tx, now - timedelta(seconds=deadline_s), DEADLINE_BATCH
        )
    cancelled = 0
    for order_id in candidates:
        async with service.unit_of_work(correlation_id=order_id) as uow:
            before = await store.load_order(uow.tx, order_id)
            if before is None:
                continue
            transition = domain.expire(before, now, deadline_s)
            # A saga event changed the order since the scan read it: it is looked at again.
            if not transition.changed or not await store.save_order(
                uow.tx, before, transition.order
            ):
                continue
            for status in transition.entered:
                uow.emit(handlers.status_event(transition.order, status), aggregate_id=order_id)
            cancelled += 1
            if service.metrics is not None:
                age = (now - transition.order.created_at).total_seconds()
                service.metrics.saga_duration.record(age, {"outcome": "cancelled"})
            log.warning("order %s: %s", order_id, transition.order.cancellation_detail)
    return cancelled


def deadline_task(saga: SagaSettings) -> BackgroundTask:
    async def enforce_deadline(service: ServiceRuntime, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), saga.deadline_scan_interval_s)
            if stopping.is_set():
                return
            try:
                while (
                    await cancel_overdue(service, saga.saga_deadline_s, datetime.now(UTC))
                    == DEADLINE_BATCH
                ):
                    pass
            except Exception:
                # The next scan tries again; nothing is lost (the orders are still overdue).
                log.exception("order: the saga deadline scan failed")

    return enforce_deadline


def build(runtime: RuntimeSettings, saga: SagaSettings) -> ServiceDefinition:
    try:
        catalog = load_catalog(saga.catalog_path)
    except CatalogError as exc:
        raise ConfigurationError(f"order service: {exc} (set CHOREO_CATALOG)") from exc
    token_key = payment_token.sealing_key(saga)

    def add_servicer(server: grpc.aio.Server, service: ServiceRuntime) -> None:
        api.add_to_server(server, service, catalog, token_key, saga.order_created_versions)

    # The runtime (and its metrics, if on) exists only once the service starts.
    started: list[ServiceRuntime] = []

    def saga_ended(outcome: str, seconds: float) -> None:
        if started and started[0].metrics is not None:
            started[0].metrics.saga_duration.record(seconds, {"outcome": outcome})

    async def on_start(service: ServiceRuntime) -> None:
        started.append(service)

    return ServiceDefinition(
        name="order",
        handlers=handlers.bind(saga_ended),
        on_start=on_start,
        schema=store.SCHEMA,
        grpc_services=[GRPC_SERVICE],
        add_servicer=add_servicer,
        resources={"catalog": catalog},
        background=[deadline_task(saga)],
    )
