"""Read a whole stream (or a subject of it) with a throwaway consumer: for audits and tools."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from typing import Any

from nats.js import api


@dataclass(frozen=True)
class StoredMessage:
    stream: str
    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes


async def read_stream(
    js: Any, stream: str, subject: str | None = None, batch: int = 500
) -> list[StoredMessage]:
    """Every message currently in ``stream`` (optionally filtered), in stream order."""
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    last_seq = info.state.last_seq
    name = f"read-{uuid.uuid4().hex[:12]}"
    await js.add_consumer(
        stream,
        api.ConsumerConfig(
            name=name,
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.ALL,
            filter_subject=subject,
            inactive_threshold=30.0,
            mem_storage=True,
        ),
    )
    sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    messages: list[StoredMessage] = []
    try:
        while True:
            try:
                fetched = await sub.fetch(batch, timeout=1.0)
            except TimeoutError:  # nats raises both its own and asyncio.TimeoutError
                break
            for msg in fetched:
                messages.append(
                    StoredMessage(
                        stream=stream,
                        seq=msg.metadata.sequence.stream,
                        subject=msg.subject,
                        headers=dict(msg.headers or {}),
                        data=msg.data,
                    )
                )
            if messages and messages[-1].seq >= last_seq:
                break
    finally:
        await sub.unsubscribe()
        # If this fails the consumer still expires by itself after inactive_threshold.
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, name)
    return messages
