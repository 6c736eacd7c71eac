"""The same step on FastStream 0.7.8, as ``tools/faststream_build.py`` writes a handler.

A durable pull subscriber with a Protobuf decoder, ``AckPolicy.NACK_ON_ERROR``; the handler
commits the domain step in its own transaction, then awaits ``broker.publish`` of the event
(a JetStream publish: FastStream's headers, a PubAck awaited); FastStream acks on return. The
broker's connection is the in-memory client (:mod:`tools.callgrind.wire`); the subscriber is
started without its fetch task (which would need a server), and a fetched batch is handed to
``consume`` one task each in a task group, as FastStream's own pull loop does.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import anyio
from faststream import AckPolicy
from faststream._internal.endpoint.subscriber.usecase import SubscriberUsecase
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from faststream.nats.message import NatsMessage as RawNatsMessage
from nats.aio.client import Client

from choreo import subjects
from choreo.store.sqlite import SqliteDatabase
from shop.order.v1 import events_pb2 as order_events
from tools.callgrind import workload
from tools.callgrind.wire import MemoryTransport, ack_subject, connected_client, disconnect, hmsg

EVENT = order_events.OrderCreated
EVENT_TYPE = EVENT.DESCRIPTOR.full_name
STREAM = subjects.stream_name(subjects.context_of(EVENT_TYPE))
DURABLE = "fs_" + subjects.durable_name(workload.SERVICE, EVENT_TYPE)
PUBLISH_TIMEOUT_S = 600.0


class MemoryNatsBroker(NatsBroker):
    """A NatsBroker whose connection is the given client, not a socket to a server."""

    def __init__(self, nc: Client, **options: Any) -> None:
        super().__init__(**options)
        self._memory_nc = nc

    async def _connect(self) -> Client:
        self.config.connect(self._memory_nc)
        return self._memory_nc


class FastStreamPath:
    def __init__(self, directory: Path, batch: int) -> None:
        self.batch = batch
        self.db = SqliteDatabase(directory / "faststream.db")
        self.transport = MemoryTransport(stream="SHOP_INVENTORY")
        self._tasks: list[asyncio.Task[Any]] = []
        self._next_index = 0
        self.handled = 0
        self.sid = 0

    async def open(self) -> None:
        await self.db.migrate(workload.SCHEMA)
        async with self.db.transaction() as tx:
            await workload.seed(tx)
        self.nc, self._tasks = await connected_client(self.transport)
        self.broker = MemoryNatsBroker(self.nc, log_level=logging.DEBUG)
        self.subscriber = self.broker.subscriber(
            subjects.event_type_filter(EVENT_TYPE),
            stream=JStream(STREAM, declare=False),
            durable=DURABLE,
            pull_sub=PullSub(batch_size=64),
            ack_policy=AckPolicy.NACK_ON_ERROR,
            decoder=self._decode,
        )
        self.subscriber(self._on_event)
        await self.broker.connect()
        # The subscriber's start without its NATS part (binding the pull needs a server).
        await SubscriberUsecase.start(self.subscriber)
        self.subscriber._post_start()
        # Deliveries come on a plain subscription's queue (FastStream would fetch them).
        self._sub = await self.nc.subscribe(self.nc.new_inbox())
        self.sid = max(self.nc._subs)

    async def close(self) -> None:
        await disconnect(self.nc, self._tasks)
        await self.db.close()

    @staticmethod
    async def _decode(msg: RawNatsMessage) -> Any:
        return EVENT.FromString(msg.body)

    async def _on_event(self, body: Any, msg: NatsMessage) -> None:
        async with self.db.transaction() as tx:
            reserved = await workload.reserve_stock(tx, body)
        emitted = type(reserved).DESCRIPTOR.full_name
        await self.broker.publish(
            reserved.SerializeToString(),
            subjects.event_subject(emitted, msg.correlation_id),
            correlation_id=msg.correlation_id,
            stream=subjects.stream_name(subjects.context_of(emitted)),
            # Under valgrind a PubAck takes long in wall-clock time; only the count matters.
            timeout=PUBLISH_TIMEOUT_S,
        )
        self.handled += 1

    # --- inputs and stages --------------------------------------------------------------

    def frames(self, count: int) -> list[bytes]:
        out: list[bytes] = []
        for start in range(0, count, self.batch):
            chunk = b""
            for _ in range(min(self.batch, count - start)):
                self._next_index += 1
                event = workload.order_created(self._next_index)
                # FastStream's own headers, as its publish writes them.
                headers = {
                    "content-type": "application/octet-stream",
                    "correlation_id": event.order_id,
                }
                reply = ack_subject(STREAM, DURABLE, 1, self._next_index, 0)
                subject = subjects.event_subject(EVENT_TYPE, event.order_id)
                chunk += hmsg(subject, self.sid, reply, headers, event.SerializeToString())
            out.append(chunk)
        return out

    async def receive(self, frames: list[bytes]) -> list[list[Any]]:
        batches = []
        queue = self._sub._pending_queue
        for frame in frames:
            self.transport.feed(frame)
            msgs = [await queue.get()]
            while not queue.empty():
                msgs.append(queue.get_nowait())
            batches.append(msgs)
        return batches

    async def handler_only(self, bodies: list[bytes]) -> None:
        """The handler's own work without the framework: decode, the commit, encode."""
        for start in range(0, len(bodies), self.batch):
            await asyncio.gather(*(self._bare(body) for body in bodies[start : start + self.batch]))

    async def _bare(self, body: bytes) -> bytes:
        event = EVENT.FromString(body)
        async with self.db.transaction() as tx:
            reserved = await workload.reserve_stock(tx, event)
        return reserved.SerializeToString()

    async def consume(self, frames: list[bytes]) -> None:
        """Deliveries through FastStream: its consume per message, one task each."""
        for msgs in await self.receive(frames):
            async with anyio.create_task_group() as group:
                for msg in msgs:
                    group.start_soon(self.subscriber.consume, msg)
        await asyncio.sleep(0)
