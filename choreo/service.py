"""The service runtime: one object that wires a service definition to NATS, its database and
gRPC, and takes it down in order.

Start-up: database (runtime tables + the service's schema), NATS connection, streams, durable
consumers, the outbox relay, the gRPC server with health and reflection. Shutdown (SIGTERM):
stop fetching, let in-flight handlers finish, flush the relay, stop gRPC, drain NATS, close the
database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import nats
import nats.errors
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from choreo import contracts, faults, inbox
from choreo.consumer import Consumer, Subscription, one_subscription_per_event
from choreo.envelope import EventRegistry
from choreo.errors import ConfigurationError
from choreo.handling import Handler, UnitOfWork
from choreo.outbox import OutboxRelay
from choreo.settings import RuntimeSettings
from choreo.store import open_database
from choreo.store.port import Database
from choreo.store.schema import runtime_schema
from choreo.streams import ensure_streams
from choreo.telemetry import configure_tracing

log = logging.getLogger(__name__)

AddServicer = Callable[[grpc.aio.Server, "ServiceRuntime"], None]
StartHook = Callable[["ServiceRuntime"], Awaitable[None]]


@dataclass(frozen=True)
class ServiceDefinition:
    """Everything that makes a service itself; the runtime supplies the rest."""

    name: str
    handlers: Mapping[type[Message], Handler]
    schema: Sequence[str] = ()
    grpc_services: Sequence[str] = ()  # full names, for health and reflection
    add_servicer: AddServicer | None = None
    on_start: StartHook | None = None
    extra_subscriptions: Sequence[Subscription] = ()
    resources: dict[str, Any] = field(default_factory=dict)  # e.g. fake providers

    def subscriptions(self) -> list[Subscription]:
        return one_subscription_per_event(self.name, self.handlers) + list(self.extra_subscriptions)


def default_registry() -> EventRegistry:
    registry = EventRegistry()
    for cls in contracts.event_classes().values():
        registry.register(cls)
    return registry


async def connect_nats(url: str, name: str, wait_s: float = 0.0) -> Any:
    """Connect with endless reconnects: a broker restart must not need a service restart.

    The first connection is retried for ``wait_s`` (at least a few seconds): a service started
    while the broker is restarting (or frozen) waits for it instead of crash-looping, and a
    command-line tool pointed at nothing says so quickly.
    """

    async def log_error(error: Exception) -> None:
        log.warning("%s: NATS connection problem: %r", name, error)

    try:
        return await asyncio.wait_for(
            nats.connect(
                url,
                name=name,
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                ping_interval=5,
                max_outstanding_pings=3,
                error_cb=log_error,
            ),
            timeout=max(wait_s, 3.0),
        )
    except Exception as exc:
        raise ConfigurationError(
            f"NATS broker unreachable at {url} ({exc!r}): start one (`choreo up` embeds one)"
            " or set --nats-url / CHOREO_NATS_URL"
        ) from exc


class ServiceRuntime:
    def __init__(self, definition: ServiceDefinition, settings: RuntimeSettings) -> None:
        self.definition = definition
        self.settings = settings
        self.registry = default_registry()
        self.db: Database
        self.nc: Any = None
        self.js: Any = None
        self.relay: OutboxRelay
        self.consumers: list[Consumer] = []
        self.grpc_server: grpc.aio.Server | None = None
        self.grpc_port: int = settings.grpc_port
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def name(self) -> str:
        return self.definition.name

    def aggregate_type_of(self, cls: type[Message]) -> str:
        return contracts.aggregate_type(cls)

    async def start(self) -> None:
        settings = self.settings
        self.db = await open_database(settings.database_url)
        await self.db.migrate(runtime_schema(self.db.dialect) + list(self.definition.schema))
        self.nc = await connect_nats(
            settings.nats_url, f"choreo-{self.name}", wait_s=settings.connect_wait_s
        )
        self.js = self.nc.jetstream()
        await self._until_broker_answers(lambda: ensure_streams(self.js, settings))
        self.relay = OutboxRelay(
            self.db,
            self.js,
            batch=settings.relay_batch,
            sweep_interval_s=settings.relay_sweep_interval_s,
        )
        for subscription in self.definition.subscriptions():
            consumer = Consumer(
                js=self.js,
                db=self.db,
                subscription=subscription,
                registry=self.registry,
                aggregate_type_of=self.aggregate_type_of,
                settings=settings,
                on_commit=self.relay.submit,
            )
            await self._until_broker_answers(consumer.bind)
            self.consumers.append(consumer)
        if self.definition.on_start is not None:
            await self.definition.on_start(self)
        await self._start_grpc()
        self._tasks.append(asyncio.create_task(self.relay.run(self._stopping)))
        self._tasks += [asyncio.create_task(c.run(self._stopping)) for c in self.consumers]
        self._tasks.append(asyncio.create_task(self._prune_inbox()))
        log.info("%s: started (gRPC on %s:%s)", self.name, settings.grpc_host, self.grpc_port)

    async def _until_broker_answers(self, step: Callable[[], Awaitable[None]]) -> None:
        """Retry a start-up call to JetStream while the broker is restarting, up to
        ``connect_wait_s``; after that the error surfaces and the process exits."""
        deadline = time.monotonic() + self.settings.connect_wait_s
        while True:
            try:
                await step()
                return
            except (nats.errors.Error, TimeoutError) as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("%s: JetStream not answering yet (%r); retrying", self.name, exc)
                await asyncio.sleep(0.5)

    async def _start_grpc(self) -> None:
        interceptors = []
        if configure_tracing(self.name):
            from opentelemetry.instrumentation.grpc import aio_server_interceptor

            interceptors.append(aio_server_interceptor())
        server = grpc.aio.server(interceptors=interceptors)
        if self.definition.add_servicer is not None:
            self.definition.add_servicer(server, self)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = [*self.definition.grpc_services, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        try:
            self.grpc_port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigurationError(
                f"{self.name}: cannot listen for gRPC on {address} (taken?): choose another"
                f" port with CHOREO_GRPC_PORT"
            ) from exc
        await server.start()
        for service_name in ["", *self.definition.grpc_services]:
            await health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
        self._health_servicer = health_servicer
        self.grpc_server = server

    async def _prune_inbox(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.inbox_prune_interval_s)
            if self._stopping.is_set():
                return
            try:
                async with self.db.transaction() as tx:
                    removed = await inbox.prune(tx, self.settings.max_age_s)
                if removed:
                    log.info("%s: pruned %d inbox rows older than max_age", self.name, removed)
            except Exception:
                log.exception("%s: inbox pruning failed", self.name)

    @contextlib.asynccontextmanager
    async def unit_of_work(self, correlation_id: str) -> AsyncIterator[UnitOfWork]:
        """A command's transaction: state changes and emitted events commit together."""
        async with self.db.transaction() as tx:
            uow = UnitOfWork(
                tx,
                service=self.name,
                correlation_id=correlation_id,
                aggregate_type_of=self.aggregate_type_of,
            )
            yield uow
            await uow.write_outbox()
        faults.crash_point(faults.AFTER_COMMIT_BEFORE_PUBLISH)
        if uow.outbox_rows:
            self.relay.submit(uow.outbox_rows)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop fetching, finish in-flight handlers, flush the relay, then close everything."""
        self._stopping.set()
        if self.grpc_server is not None:
            with contextlib.suppress(Exception):
                await self._health_servicer.enter_graceful_shutdown()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace_s + 2)
            for task in pending:
                task.cancel()
        if self.nc is not None and self.nc.is_connected:
            await self.relay.flush(timeout_s=grace_s)
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace_s)
        if self.nc is not None:
            # Not drain(): it waits for pull subscriptions that will never be fetched again.
            # Acks and relay publishes are already flushed above; flush() sends the rest.
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
            await self.nc.close()
        await self.db.close()
        log.info("%s: stopped", self.name)

    async def run_until_signal(self) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        await self.stop()
