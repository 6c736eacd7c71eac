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
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
import nats.errors
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from choreo import checkpoints, contracts, inbox, natsconn
from choreo.broker import BrokerLink
from choreo.cluster import seed_urls
from choreo.consumer import Consumer, Subscription, one_subscription_per_event
from choreo.envelope import EventRegistry
from choreo.errors import ConfigurationError
from choreo.grpc_tls import server_credentials
from choreo.handling import GiveUpHandler, Handler, UnitOfWork
from choreo.health import HealthMonitor, outbox_backlog
from choreo.metrics import RpcMetricsInterceptor, ServiceMetrics, Snapshot, start_metrics
from choreo.outbox import OutboxRelay
from choreo.permissions import Credentials, inbox_prefix, read_credentials
from choreo.reactions import check_reactions
from choreo.redact import redact_url
from choreo.reflection import enable_server_reflection
from choreo.request_limits import max_receive_bytes
from choreo.settings import RuntimeSettings
from choreo.store import open_database
from choreo.store.port import Database
from choreo.store.schema import runtime_schema
from choreo.streams import ensure_streams
from choreo.telemetry import configure_tracing, shutdown_tracing
from choreo.tracing import TraceContextInterceptor

log = logging.getLogger(__name__)

AddServicer = Callable[[grpc.aio.Server, "ServiceRuntime"], None]
StartHook = Callable[["ServiceRuntime"], Awaitable[None]]
# A periodic job of the service (e.g. the order saga's deadline): runs until the event is set.
BackgroundTask = Callable[["ServiceRuntime", asyncio.Event], Coroutine[Any, Any, None]]


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
    # Event class -> what its step does when the handler gives up (compensate, emit a failure).
    give_ups: Mapping[type[Message], GiveUpHandler] = field(default_factory=dict)
    background: Sequence[BackgroundTask] = ()

    def subscriptions(self) -> list[Subscription]:
        return one_subscription_per_event(self.name, self.handlers, self.give_ups) + list(
            self.extra_subscriptions
        )


def default_registry() -> EventRegistry:
    registry = EventRegistry()
    for cls in contracts.event_classes().values():
        registry.register(cls)
    return registry


class BrokerLoginRefused(ConfigurationError):
    """The broker answered but refused the login (no, or wrong, credentials)."""


async def connect_nats(
    url: str,
    name: str,
    wait_s: float = 0.0,
    pending_size: int = 2 * 1024 * 1024,
    credentials: Credentials | None = None,
) -> Any:
    """Connect with endless reconnects: a broker restart must not need a service restart.

    The first connection is retried for ``wait_s`` (at least a few seconds): a service started
    while the broker is restarting (or frozen) waits for it instead of crash-looping, and a
    command-line tool pointed at nothing says so quickly.
    """

    refused: list[Exception] = []
    first_connect_done = False

    async def log_error(error: Exception) -> None:
        if "authorization violation" in str(error).lower():
            refused.append(error)  # a login problem, not an unreachable broker: said below
            if not first_connect_done:
                # nats-py retries a refused login forever, and the timeout below cannot always
                # stop it: Python 3.11's wait_for can lose a cancellation that lands as nats-py's
                # own inner wait_for finishes (a CLI then hung for good). Raised here, the
                # error leaves nats.connect at once.
                raise error
        log.warning("%s: NATS connection problem: %r", name, error)

    # A broker with per-service users: log in, and take replies on the user's private inbox.
    auth: dict[str, Any] = {}
    if credentials is not None:
        auth = {
            "user": credentials.user,
            "password": credentials.password,
            "inbox_prefix": inbox_prefix(credentials.user),
        }

    try:
        nc = await asyncio.wait_for(
            # natsconn: a reconnect never waits behind unsent data (issue 22, defect 1).
            natsconn.connect(
                seed_urls(url),  # one URL, or a cluster's comma-separated seeds
                name=name,
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                ping_interval=natsconn.PING_INTERVAL_S,
                max_outstanding_pings=natsconn.MAX_OUTSTANDING_PINGS,
                error_cb=log_error,
                # What nats-py buffers while reconnecting; the relay sends nothing then anyway.
                pending_size=pending_size,
                **auth,
            ),
            timeout=max(wait_s, 3.0),
        )
        first_connect_done = True
        return nc
    except Exception as exc:
        if refused:
            who = (
                f"the login of user {credentials.user!r}"
                if credentials
                else "a client without login"
            )
            raise BrokerLoginRefused(
                f"the NATS broker at {redact_url(url)} refused {who} (Authorization"
                " Violation): set CHOREO_NATS_CREDENTIALS_FILE to the broker's credentials file"
                " (`choreo up --secure` writes <data dir>/secrets/nats-credentials.json) and"
                " CHOREO_NATS_USER to a user in it"
            ) from exc
        raise ConfigurationError(
            f"NATS broker unreachable at {redact_url(url)} ({redact_url(repr(exc))}): start one"
            " (`choreo up` embeds one)"
            " or set --nats-url / CHOREO_NATS_URL"
        ) from exc


def nats_credentials(settings: RuntimeSettings, default_user: str) -> Credentials | None:
    """The broker login from the credentials file the settings name, if any."""
    if not settings.nats_credentials_file:
        return None
    user = settings.nats_user or default_user
    return read_credentials(Path(settings.nats_credentials_file), user)


def grpc_server_span_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """SERVER spans for gRPC calls (the instrumentation package, in the 'otlp' extra); none,
    with a warning, without it: the events' spans and trace context still work."""
    try:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
    except ImportError:
        log.warning(
            "tracing is on but gRPC calls make no spans: pip install 'choreo[otlp]' for them"
        )
        return []
    # Health checks are polled every few seconds: spans of them would bury the sagas.
    health_checks = filters.negate(filters.health_check())
    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(filter_=health_checks)
    return [interceptor]


class ServiceRuntime:
    def __init__(self, definition: ServiceDefinition, settings: RuntimeSettings) -> None:
        self.definition = definition
        self.settings = settings
        self.registry = default_registry()
        self.db: Database
        self.link: BrokerLink | None = None  # the NATS connection, re-created if closed for good
        self.js: Any = None
        self.relay: OutboxRelay
        self.consumers: list[Consumer] = []
        self.grpc_server: grpc.aio.Server | None = None
        self.grpc_port: int = settings.grpc_port
        # Set when CHOREO_METRICS_PORT is: services record their own figures through it
        # (e.g. the order saga's duration); None means metrics are off.
        self.metrics: ServiceMetrics | None = None
        self.metrics_port: int = 0
        self.health: HealthMonitor | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def nc(self) -> Any:
        """The current NATS connection."""
        return self.link.nc if self.link is not None else None

    def aggregate_type_of(self, cls: type[Message]) -> str:
        return contracts.aggregate_type(cls)

    async def start(self) -> None:
        settings = self.settings
        check_reactions(self.name, [*self.definition.handlers, *self.definition.give_ups])
        self.db = await open_database(
            settings.database_url,
            pool_size=settings.database_pool_size,
            acquire_timeout_s=settings.database_acquire_timeout_s,
        )
        await self.db.migrate(runtime_schema(self.db.dialect) + list(self.definition.schema))
        credentials = nats_credentials(settings, default_user=self.name)
        self.link = BrokerLink(
            lambda: connect_nats(
                settings.nats_url,
                f"choreo-{self.name}",
                wait_s=settings.connect_wait_s,
                pending_size=settings.nats_pending_size,
                credentials=credentials,
            )
        )
        await self.link.open()
        if settings.metrics_port:
            self.metrics, self.metrics_port = start_metrics(
                self.name, settings.grpc_host, settings.metrics_port
            )
        # Always the current connection's context: after the link re-creates the connection,
        # consumers (whose fetch then fails and re-binds) and dead-lettering follow.
        self.js = self.link.js
        await self._until_broker_answers(lambda: ensure_streams(self.js, settings))
        self.relay = OutboxRelay(
            self.db,
            self.link,
            service=self.name,
            batch=settings.relay_batch,
            sweep_interval_s=settings.relay_sweep_interval_s,
            publish_timeout_s=settings.relay_publish_timeout_s,
            max_in_flight=settings.relay_max_in_flight,
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
                on_handled=self._record_handled if self.metrics is not None else None,
            )
            await self._until_broker_answers(consumer.bind)
            self.consumers.append(consumer)
        if self.definition.on_start is not None:
            await self.definition.on_start(self)
        await self._start_grpc()
        self._tasks.append(asyncio.create_task(self.link.keep_open(self._stopping)))
        self._tasks.append(asyncio.create_task(self.relay.run(self._stopping)))
        self._tasks += [asyncio.create_task(c.run(self._stopping)) for c in self.consumers]
        self._tasks.append(asyncio.create_task(self._prune_inbox()))
        self.health = HealthMonitor(
            service=self.name,
            broker_connected=lambda: self.nc is not None and bool(self.nc.is_connected),
            last_cycles=lambda: {c.name: c.last_cycle for c in self.consumers},
            db=self.db,
            set_status=self._set_serving,
            consumer_stall_s=settings.health_consumer_stall_s,
            outbox_max_age_s=settings.health_outbox_max_age_s,
        )
        self._tasks.append(asyncio.create_task(self.health.run(self._stopping)))
        if self.metrics is not None:
            self._observe(self.metrics)
            self._tasks.append(
                asyncio.create_task(
                    self.metrics.refresh_forever(self._refresh_metrics, self._stopping)
                )
            )
        self._tasks += [
            asyncio.create_task(task(self, self._stopping)) for task in self.definition.background
        ]
        log.info(
            "%s: started (gRPC on %s:%s, %s event loop)",
            self.name,
            settings.grpc_host,
            self.grpc_port,
            type(asyncio.get_running_loop()).__module__.split(".")[0],
        )
        if self.metrics is not None:
            log.info(
                "%s: metrics on http://%s:%s/metrics",
                self.name,
                settings.grpc_host,
                self.metrics_port,
            )

    def _record_handled(self, consumer: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.handler_duration.record(seconds, {"consumer": consumer})

    def _observe(self, metrics: ServiceMetrics) -> None:
        """Counters the runtime keeps anyway are read at scrape time, not counted twice."""
        metrics.observe_outcomes(lambda: [(c.name, dict(c.stats.outcomes)) for c in self.consumers])
        metrics.observe_published(lambda: self.relay.published)

    async def _refresh_metrics(self, snapshot: Snapshot) -> None:
        for consumer in self.consumers:
            info = await self.js.consumer_info(consumer.subscription.stream, consumer.name)
            snapshot.pending[consumer.name] = int(info.num_pending or 0)
            snapshot.ack_pending[consumer.name] = int(info.num_ack_pending or 0)
        snapshot.outbox_backlog, snapshot.outbox_oldest_created_at = await outbox_backlog(self.db)

    async def _set_serving(self, serving: bool) -> None:
        if self.grpc_server is None or self._stopping.is_set():
            return  # shutting down: enter_graceful_shutdown has the last word
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service_name in ["", *self.definition.grpc_services]:
            await self._health_servicer.set(service_name, status)

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
        interceptors: list[grpc.aio.ServerInterceptor] = [TraceContextInterceptor()]
        if self.metrics is not None:
            interceptors.append(RpcMetricsInterceptor(self.metrics))
        if configure_tracing(self.name):
            interceptors += grpc_server_span_interceptors()
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                # A second server on a live port fails to bind instead of sharing it.
                ("grpc.so_reuseport", 0),
                # Nothing larger than the largest valid request is read (choreo.request_limits).
                (
                    "grpc.max_receive_message_length",
                    max_receive_bytes(self.definition.grpc_services),
                ),
            ],
        )
        if self.definition.add_servicer is not None:
            self.definition.add_servicer(server, self)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        # Reflection v1 and v1alpha (choreo.reflection).
        enable_server_reflection([*self.definition.grpc_services, health.SERVICE_NAME], server)
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        credentials = server_credentials(self.settings)
        try:
            if credentials is None:
                self.grpc_port = server.add_insecure_port(address)
            else:
                self.grpc_port = server.add_secure_port(address, credentials)
            if self.grpc_port == 0:  # some gRPC versions answer 0 instead of raising
                raise RuntimeError(f"failed to bind {address}")
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
        await checkpoints.reached(checkpoints.AFTER_COMMIT_BEFORE_PUBLISH)
        if uow.outbox_rows:
            # On the wire before the command answers: the answer's own send would go first.
            await self.relay.send_now(uow.outbox_rows)

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
        shutdown_tracing()  # batched spans leave before the process does
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
