"""The serial naive build of the same saga: what a team writes first by hand on nats-py.

**No longer a line of ``choreo bench``**: its consumers handle one message at a time and it runs
on asyncio's loop while the saga runs on uvloop, so ``saga / naive`` measured concurrency more
than what exactly-once costs. The baseline is now the FastStream build
(``tools/faststream_build.py``), which imports this module's handler context and duck-typed
runtime (:class:`NaiveContext`, :class:`NaiveService`). ``choreo bench --profile`` still
profiles this build beside the saga.

The same five services run here with the same handlers, domain decisions, SQL stores, gRPC
API and fake providers as ``choreo serve``, on plain nats-py the way most Python teams wire a
broker by hand:
- one durable pull consumer per event a service reacts to, messages handled one by one;
- the handler's state change committed in its own transaction, then every event it emits
  published straight to JetStream (awaiting each PubAck), then the ack;
- a handler that raises is nak'ed and redelivered, forever.

What it leaves out is exactly what choreo adds: no inbox (a redelivered event is applied
again), no outbox (a crash between the commit and the publish loses the event and strands the
saga), no ``Nats-Msg-Id`` (a retried publish is a second event), no give-up, deadline, gap
holds, tracing, metrics or health beyond SERVING. It is a baseline to measure against, never
something to run for real.

    CHOREO_NATS_URL=... CHOREO_DATABASE_URL=sqlite:///x.db CHOREO_GRPC_PORT=... \
        python -m tools.naive SERVICE
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import nats
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from nats.js import api

from choreo import contracts, subjects
from choreo.envelope import H_MSG_ID, Envelope, decode, root_envelope
from choreo.service import ServiceDefinition, default_registry
from choreo.settings import RuntimeSettings
from choreo.store import open_database
from choreo.store.port import Database, Transaction
from choreo.streams import ensure_streams
from services.registry import SERVICE_NAMES, build
from services.settings import SagaSettings

log = logging.getLogger("choreo.naive")
T = TypeVar("T")

FETCH_BATCH = 64


class NaiveEmitter:
    """``emit`` collects events; they are published after the transaction commits."""

    def __init__(self) -> None:
        self.pending: list[tuple[Message, str]] = []

    def emit(self, message: Message, *, aggregate_id: str) -> None:
        self.pending.append((message, aggregate_id))


class NaiveContext(NaiveEmitter):
    """What a handler uses of choreo's ``HandlerContext``: ``tx``, ``emit``, ``call`` and the
    envelope; ``tx`` is a plain transaction with no inbox row."""

    def __init__(self, tx: Transaction, envelope: Envelope, settings: RuntimeSettings) -> None:
        super().__init__()
        self.tx = tx
        self.envelope = envelope
        self.settings = settings

    async def call(self, call: Awaitable[T], what: str) -> T:
        return await call


class NaiveUnitOfWork(NaiveEmitter):
    def __init__(self, tx: Transaction) -> None:
        super().__init__()
        self.tx = tx


def _headers(envelope: Envelope) -> dict[str, str]:
    headers = envelope.to_headers()
    del headers[H_MSG_ID]  # no broker-side dedup: a naive build does not set one
    return headers


class NaiveService:
    """Duck-types the parts of ``ServiceRuntime`` the services' APIs and start hooks use."""

    def __init__(self, definition: ServiceDefinition, settings: RuntimeSettings) -> None:
        self.definition = definition
        self.settings = settings
        self.name = definition.name
        self.metrics = None
        self.db: Database
        self.js: Any = None
        self._registry = default_registry()

    async def publish(self, envelope: Envelope, message: Message) -> None:
        await self.js.publish(
            envelope.subject, message.SerializeToString(), headers=_headers(envelope)
        )

    @contextlib.asynccontextmanager
    async def unit_of_work(self, correlation_id: str) -> AsyncIterator[NaiveUnitOfWork]:
        async with self.db.transaction() as tx:
            uow = NaiveUnitOfWork(tx)
            yield uow
        for message, aggregate_id in uow.pending:
            envelope = root_envelope(
                message.DESCRIPTOR.full_name,
                source=self.name,
                correlation_id=correlation_id,
                aggregate_type=contracts.aggregate_type(type(message)),
                aggregate_id=aggregate_id,
                aggregate_version=0,
            )
            await self.publish(envelope, message)

    async def consume(self, event: type[Message], handler: Any, stop: asyncio.Event) -> None:
        event_type = event.DESCRIPTOR.full_name
        durable = "naive_" + subjects.durable_name(self.name, event_type)
        stream = subjects.stream_name(subjects.context_of(event_type))
        await self.js.add_consumer(
            stream,
            api.ConsumerConfig(
                durable_name=durable,
                ack_policy=api.AckPolicy.EXPLICIT,
                filter_subject=subjects.event_type_filter(event_type),
                max_ack_pending=1000,
                ack_wait=30,
            ),
        )
        sub = await self.js.pull_subscribe_bind(durable=durable, stream=stream)
        while not stop.is_set():
            try:
                msgs = await sub.fetch(FETCH_BATCH, timeout=0.5)
            except TimeoutError:
                continue
            for msg in msgs:
                await self.handle(msg, handler)

    async def handle(self, msg: Any, handler: Any) -> None:
        try:
            envelope, message = decode(msg.headers, msg.data, self._registry)
            async with self.db.transaction() as tx:
                context = NaiveContext(tx, envelope, self.settings)
                await handler(context, message)
            for emitted, aggregate_id in context.pending:
                caused = envelope.caused(
                    emitted.DESCRIPTOR.full_name,
                    source=self.name,
                    aggregate_type=contracts.aggregate_type(type(emitted)),
                    aggregate_id=aggregate_id,
                    aggregate_version=0,
                )
                await self.publish(caused, emitted)
        except Exception:
            log.exception("%s: handler failed; redelivering", self.name)
            await msg.nak()
            return
        await msg.ack()

    async def run(self, stop: asyncio.Event) -> None:
        self.db = await open_database(self.settings.database_url)
        await self.db.migrate(list(self.definition.schema))
        nc = await nats.connect(self.settings.nats_url, name=f"naive-{self.name}")
        self.js = nc.jetstream()
        await ensure_streams(self.js, self.settings)
        if self.definition.on_start is not None:
            await self.definition.on_start(self)  # type: ignore[arg-type]  # duck-typed
        server = grpc.aio.server()
        if self.definition.add_servicer is not None:
            self.definition.add_servicer(server, self)  # type: ignore[arg-type]
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        server.add_insecure_port(f"{self.settings.grpc_host}:{self.settings.grpc_port}")
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        consumers = [
            asyncio.create_task(self.consume(event, handler, stop))
            for event, handler in self.definition.handlers.items()
        ]
        await stop.wait()
        await asyncio.gather(*consumers, return_exceptions=True)
        await server.stop(1)
        await nc.close()
        await self.db.close()


async def main(service: str) -> None:
    if service not in SERVICE_NAMES:
        sys.exit(f"unknown service {service!r}: choose one of {', '.join(SERVICE_NAMES)}")
    data_dir = Path(os.environ.get("CHOREO_DATA_DIR", "data"))
    settings = RuntimeSettings.from_env(
        service=service,
        database_url=os.environ.get(
            "CHOREO_DATABASE_URL", f"sqlite:///{data_dir / f'naive-{service}.db'}"
        ),
    )
    definition = build(service, settings, SagaSettings.from_env())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await NaiveService(definition, settings).run(stop)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(sys.argv[1]))
