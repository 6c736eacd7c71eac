"""Integration tests of the saga services: each runs in-process on the real runtime, against a
real nats-server, and is driven by publishing the events that trigger it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from choreo import subjects
from choreo.broker import EmbeddedBroker
from choreo.health import outbox_backlog
from choreo.service import ServiceDefinition, ServiceRuntime
from choreo.settings import RuntimeSettings
from choreo.testing import stream_count, wait_for
from services.settings import SagaSettings

M = TypeVar("M", bound=Message)


def runtime_settings(name: str, broker: EmbeddedBroker, tmp_path: Path) -> RuntimeSettings:
    return RuntimeSettings(
        service=name,
        nats_url=broker.url,
        database_url=f"sqlite:///{tmp_path}/{name}.db",
        grpc_port=0,
        fetch_timeout_s=0.2,
        relay_sweep_interval_s=0.2,
        backoff_base_s=0.05,
    )


Build = Callable[[RuntimeSettings, SagaSettings], ServiceDefinition]


def stream_of(cls: type[Message]) -> str:
    return subjects.stream_name(subjects.context_of(cls.DESCRIPTOR.full_name))


async def emitted(js: Any, cls: type[M]) -> list[M]:
    """Every ``cls`` event in its stream, oldest first."""
    stream = stream_of(cls)
    subject = cls.DESCRIPTOR.full_name
    info = await js.stream_info(stream)
    found: list[M] = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if not seq:
            continue
        msg = await js.get_msg(stream, seq)
        if subjects.event_type_of_subject(msg.subject) == subject:
            found.append(cls.FromString(msg.data))
    return found


async def count(js: Any, cls: type[Message]) -> int:
    return await stream_count(js, stream_of(cls), cls.DESCRIPTOR.full_name)


async def wait_for_count(js: Any, cls: type[Message], n: int, timeout: float = 15.0) -> None:
    async def reached() -> bool:
        return await count(js, cls) >= n

    await wait_for(reached, timeout=timeout, what=f"{n} x {cls.DESCRIPTOR.name}")


def channel(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def processed(runtime: ServiceRuntime, cls: type[Message]) -> int:
    """How many deliveries of ``cls`` the service finished with (handled, duplicate, ...)."""
    outcomes = [
        c.stats.outcomes
        for c in runtime.consumers
        if cls.DESCRIPTOR.full_name in c.subscription.event_types
    ]
    return sum(n for o in outcomes for k, n in o.items() if k != "retry" and k != "held")


async def wait_processed(runtime: ServiceRuntime, cls: type[Message], n: int) -> None:
    async def done() -> bool:
        return processed(runtime, cls) >= n

    await wait_for(done, timeout=15, what=f"{n} deliveries of {cls.DESCRIPTOR.name} processed")


async def wait_published(runtime: ServiceRuntime, timeout: float = 15.0) -> None:
    """Until the service's outbox is empty: everything its handlers committed so far is on the
    broker. After ``wait_processed``, a count of what it emitted is then final, with no sleep."""

    async def drained() -> bool:
        backlog, _ = await outbox_backlog(runtime.db)
        return backlog == 0

    await wait_for(drained, timeout=timeout, what=f"{runtime.name}'s outbox published")
