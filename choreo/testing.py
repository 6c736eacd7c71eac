"""Helpers for tests of choreo services: publish a raw event, wait for a condition.

Used by the project's own tests and meant for teams testing their services against a real
broker (see ``EmbeddedBroker``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message

from choreo import contracts, subjects
from choreo.envelope import Envelope, new_event_id


def envelope_for(
    message: Message,
    *,
    aggregate_id: str,
    version: int = 1,
    event_id: str | None = None,
    correlation_id: str | None = None,
    chain_depth: int = 0,
    source: str = "test",
    traceparent: str | None = None,
) -> Envelope:
    event_id = event_id or new_event_id()
    return Envelope(
        event_id=event_id,
        event_type=message.DESCRIPTOR.full_name,
        source=source,
        time=datetime.now(UTC),
        correlation_id=correlation_id or event_id,
        causation_id="",
        chain_depth=chain_depth,
        aggregate_type=contracts.aggregate_type(type(message)),
        aggregate_id=aggregate_id,
        aggregate_version=version,
        traceparent=traceparent,
    )


async def publish_event(
    js: Any,
    message: Message,
    *,
    aggregate_id: str,
    msg_id: str | None = None,
    **envelope_fields: Any,
) -> Envelope:
    """Publish ``message`` as a producer would; ``msg_id`` overrides ``Nats-Msg-Id``."""
    envelope = envelope_for(message, aggregate_id=aggregate_id, **envelope_fields)
    headers = envelope.to_headers()
    if msg_id is not None:
        headers["Nats-Msg-Id"] = msg_id
    await js.publish(envelope.subject, message.SerializeToString(), headers=headers)
    return envelope


async def wait_for(
    condition: Callable[[], Awaitable[bool]],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def stream_count(js: Any, stream: str, subject: str | None = None) -> int:
    """Messages in a stream (optionally of one event type, e.g. ``shop.order.v1.OrderCreated``,
    or on one exact subject)."""
    if subject:
        wanted = subject if subject.count(".") >= 4 else subjects.event_type_filter(subject)
        info = await js.stream_info(stream, subjects_filter=wanted)
        return sum(int(n) for n in (info.state.subjects or {}).values())
    info = await js.stream_info(stream)
    return int(info.state.messages)
