"""The FastStream build of the saga: the baseline ``choreo bench`` measures choreo against.

What a competent Python team that skips exactly-once would write on faststream[nats] (the
framework most Python teams pick for NATS), with the same five services' handlers, domain
decisions, SQL stores, gRPC API and fake providers as ``choreo serve`` (imported, never copied:
the handler context and the gRPC side's duck-typed runtime come from :mod:`tools.naive`):

- five processes, each a ``FastStream`` app with one ``NatsBroker``, run on uvloop as
  ``faststream run`` runs an app;
- one durable JetStream pull consumer per event a service reacts to
  (``@broker.subscriber(..., stream=..., durable=..., pull_sub=PullSub(batch_size=64))``):
  FastStream fetches up to 64 messages (choreo's fetch batch) and handles them concurrently,
  one task each, then fetches again. ``max_workers`` (``CHOREO_FASTSTREAM_MAX_WORKERS``, default
  1: off) hands messages to that many workers instead, fetching while they work; on this
  machine it gave fewer sagas/s at 48 clients (96-98 against 111-152) and more CPU per saga
  (15.2-15.8 ms against 14.0-16.0 in the services at 40/s), so the batch is the default.
  ``CHOREO_FASTSTREAM_BATCH`` changes the batch;
- a handler commits its state change in its own transaction, then publishes every event it
  emits with ``broker.publish(..., stream=...)``, awaiting each PubAck, and returns; FastStream
  acks on return and naks (redelivers) on an exception (``AckPolicy.NACK_ON_ERROR``: the
  default, REJECT_ON_ERROR, would drop a message whose handler failed once);
- bodies are the events' Protobuf bytes (a custom ``decoder`` per subscriber, FastStream's
  hook for a serialization of one's own), because the handlers take Protobuf messages: JSON
  would add a conversion to and from the Protobuf types that a team with its own models would
  not pay.
  Headers are FastStream's own (``correlation_id``, ``content-type``); the correlation id is
  the order id, as in choreo. Subjects and stream settings are choreo's, so the broker does the
  same work;
- FastStream's per-message access logs are at DEBUG (``log_level``), below the services'
  WARNING: a team under load does not log two lines per message.

What it leaves out is what choreo adds: no inbox (a redelivered event is applied again), no
outbox (a crash between the commit and the publish loses the event and strands the saga), no
``Nats-Msg-Id`` (a retried publish is a second event), no per-aggregate ordering inside a
consumer (workers take messages as they come), no give-up, saga deadline, dead letters, gap
holds, tracing, metrics or health beyond SERVING. A baseline to measure against, never
something to run for real.

    CHOREO_NATS_URL=... CHOREO_DATABASE_URL=sqlite:///x.db CHOREO_GRPC_PORT=... \
        python -m tools.faststream_build SERVICE
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import grpc
import nats
from faststream import AckPolicy, FastStream
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from faststream.nats.message import NatsMessage as RawNatsMessage
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from choreo import contracts, subjects
from choreo.envelope import Envelope
from choreo.service import ServiceDefinition
from choreo.settings import RuntimeSettings
from choreo.store import open_database
from choreo.streams import ensure_streams
from services.registry import SERVICE_NAMES, build
from services.settings import SagaSettings
from tools.naive import NaiveContext, NaiveService

log = logging.getLogger("choreo.faststream_build")

DURABLE_PREFIX = "fs_"  # beside choreo's durables, never one of them
MAX_WORKERS = 1  # FastStream's default: no worker pool, the fetched batch runs concurrently
FETCH_BATCH = 64


def _positive(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = int(raw)
    if value < 1:
        raise ValueError(f"{name}={raw!r}: at least 1")
    return value


def concurrency() -> tuple[int, int]:
    """(max_workers, fetch batch) per subscriber, from the environment or the defaults."""
    return (
        _positive("CHOREO_FASTSTREAM_MAX_WORKERS", MAX_WORKERS),
        _positive("CHOREO_FASTSTREAM_BATCH", FETCH_BATCH),
    )


def durable_name(service: str, event_type: str) -> str:
    return DURABLE_PREFIX + subjects.durable_name(service, event_type)


def stream_of(event_type: str) -> str:
    return subjects.stream_name(subjects.context_of(event_type))


class FastStreamService(NaiveService):
    """The services' runtime on FastStream: its ``publish`` is the broker's (the gRPC API's
    unit of work, from :class:`NaiveService`, calls it after its commit)."""

    def __init__(
        self,
        definition: ServiceDefinition,
        settings: RuntimeSettings,
        *,
        max_workers: int = MAX_WORKERS,
        fetch_batch: int = FETCH_BATCH,
    ) -> None:
        super().__init__(definition, settings)
        self.broker = NatsBroker(
            settings.nats_url,
            name=f"faststream-{definition.name}",
            log_level=logging.DEBUG,
        )
        self.max_workers = max_workers
        self.fetch_batch = fetch_batch
        self._grpc: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        for event, handler in definition.handlers.items():
            self.subscribe(event, handler)
        self.app = FastStream(
            self.broker,
            on_startup=[self.open],
            after_startup=[self.serve],
            on_shutdown=[self.close_grpc],
            after_shutdown=[self.close_db],
        )

    async def publish(self, envelope: Envelope, message: Message) -> None:
        await self.publish_event(message, envelope.correlation_id)

    async def publish_event(self, message: Message, correlation_id: str) -> None:
        event_type = message.DESCRIPTOR.full_name
        await self.broker.publish(
            message.SerializeToString(),
            subjects.event_subject(event_type, correlation_id),
            correlation_id=correlation_id,
            stream=stream_of(event_type),
        )

    def subscribe(self, event: type[Message], handler: Any) -> None:
        event_type = event.DESCRIPTOR.full_name
        aggregate_type = contracts.aggregate_type(event)

        async def decode(msg: RawNatsMessage) -> Any:
            return event.FromString(msg.body)

        async def on_event(body: Any, msg: NatsMessage) -> None:
            correlation_id = msg.correlation_id
            origin = Envelope(
                event_id=msg.message_id,
                event_type=event_type,
                source="",
                time=datetime.now(UTC),
                correlation_id=correlation_id,
                causation_id="",
                chain_depth=0,
                aggregate_type=aggregate_type,
                aggregate_id=correlation_id,
                aggregate_version=0,
            )
            async with self.db.transaction() as tx:
                context = NaiveContext(tx, origin, self.settings)
                await handler(context, body)
            for emitted, _aggregate_id in context.pending:
                await self.publish_event(emitted, correlation_id)

        self.broker.subscriber(
            subjects.event_type_filter(event_type),
            stream=JStream(stream_of(event_type), declare=False),
            durable=durable_name(self.name, event_type),
            pull_sub=PullSub(batch_size=self.fetch_batch),
            max_workers=self.max_workers,
            ack_policy=AckPolicy.NACK_ON_ERROR,
            decoder=decode,
        )(on_event)

    async def open(self) -> None:
        """Before the broker starts: the database, the streams (choreo's settings, so the
        broker does the same work), the service's own start hook."""
        self.db = await open_database(self.settings.database_url)
        await self.db.migrate(list(self.definition.schema))
        nc = await nats.connect(self.settings.nats_url, name=f"faststream-{self.name}-setup")
        try:
            await ensure_streams(nc.jetstream(), self.settings)
        finally:
            await nc.close()
        if self.definition.on_start is not None:
            await self.definition.on_start(self)  # type: ignore[arg-type]  # duck-typed

    async def serve(self) -> None:
        """After the consumers are bound: the gRPC API, then SERVING."""
        server = grpc.aio.server()
        if self.definition.add_servicer is not None:
            self.definition.add_servicer(server, self)  # type: ignore[arg-type]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        server.add_insecure_port(f"{self.settings.grpc_host}:{self.settings.grpc_port}")
        await server.start()
        self._grpc = server
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)

    async def close_grpc(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(1)

    async def close_db(self) -> None:
        await self.db.close()


def service_for(name: str) -> FastStreamService:
    if name not in SERVICE_NAMES:
        sys.exit(f"unknown service {name!r}: choose one of {', '.join(SERVICE_NAMES)}")
    data_dir = Path(os.environ.get("CHOREO_DATA_DIR", "data"))
    settings = RuntimeSettings.from_env(
        service=name,
        database_url=os.environ.get(
            "CHOREO_DATABASE_URL", f"sqlite:///{data_dir / f'faststream-{name}.db'}"
        ),
    )
    max_workers, fetch_batch = concurrency()
    return FastStreamService(
        build(name, settings, SagaSettings.from_env()),
        settings,
        max_workers=max_workers,
        fetch_batch=fetch_batch,
    )


def main(name: str) -> None:
    """As ``faststream run`` runs an app: anyio on uvloop (when installed), SIGTERM/SIGINT
    stop it gracefully."""
    logging.basicConfig(level=logging.WARNING)
    service = service_for(name)
    backend_options: dict[str, Any] = {}
    try:
        import uvloop

        backend_options["loop_factory"] = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency here
        pass
    anyio.run(service.app.run, logging.WARNING, backend_options=backend_options)


if __name__ == "__main__":
    main(sys.argv[1])
