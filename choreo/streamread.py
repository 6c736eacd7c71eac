"""Read a stream, or some subjects of it, with a throwaway consumer: audits, tools, console."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.js import api
from nats.js.errors import ServiceUnavailableError


@dataclass(frozen=True)
class StoredMessage:
    stream: str
    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes
    stored_at: datetime | None = None  # when the broker stored it (its clock)


async def open_reader(
    js: Any,
    stream: str,
    filters: list[str] | None = None,
    *,
    start_seq: int | None = None,
    start_time: datetime | None = None,
) -> tuple[str, int]:
    """A throwaway consumer on ``filters`` (every subject if none), from the start of the
    stream, a sequence or a time; returns its name and how many messages it will deliver.

    A filtered read costs what it returns, not the stream's size: the broker answers from its
    per-subject index, and the consumer says up front how many messages match."""
    name = f"read-{uuid.uuid4().hex[:12]}"
    policy = api.DeliverPolicy.ALL
    if start_seq is not None:
        policy = api.DeliverPolicy.BY_START_SEQUENCE
    elif start_time is not None:
        policy = api.DeliverPolicy.BY_START_TIME
    filters = filters or []
    info = await js.add_consumer(
        stream,
        api.ConsumerConfig(
            name=name,
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=policy,
            opt_start_seq=start_seq,
            opt_start_time=start_time,
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
            inactive_threshold=30.0,
            mem_storage=True,
        ),
    )
    return name, int(info.num_pending or 0)


async def drain(
    js: Any,
    stream: str,
    name: str,
    wanted: int,
    batch: int = 500,
    patience_s: float = 15.0,
) -> list[StoredMessage]:
    """The ``wanted`` messages of a reader from :func:`open_reader`, then the reader is gone.

    Fewer only when the reader has nothing more to deliver (messages removed meanwhile, e.g.
    by a limit), or when nothing came for ``patience_s``."""
    messages: list[StoredMessage] = []
    try:
        if wanted == 0:
            return messages
        sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
        try:
            patient_until = time.monotonic() + patience_s
            while len(messages) < wanted:
                try:
                    fetched = await sub.fetch(min(batch, wanted - len(messages)), timeout=1.0)
                except TimeoutError:  # nats raises both its own and asyncio.TimeoutError
                    # Nothing within the second. Not the end of the read while the reader
                    # still has messages to deliver: a loaded broker is merely slow, and
                    # stopping here returned a silently short read.
                    if time.monotonic() > patient_until or not await _left(js, stream, name):
                        break
                    continue
                except ServiceUnavailableError:
                    # No one answers the pull (503): on a cluster the reader's leader is not
                    # elected yet, or is moving after a node loss (the audit of a cluster that
                    # had just lost a node failed here, in test_topology_e2e).
                    if time.monotonic() > patient_until:
                        raise
                    await asyncio.sleep(0.2)
                    continue
                patient_until = time.monotonic() + patience_s
                messages.extend(
                    StoredMessage(
                        stream=stream,
                        seq=msg.metadata.sequence.stream,
                        subject=msg.subject,
                        headers=dict(msg.headers or {}),
                        data=msg.data,
                        stored_at=msg.metadata.timestamp,
                    )
                    for msg in fetched
                )
        finally:
            await sub.unsubscribe()
    finally:
        # If this fails the consumer still expires by itself after inactive_threshold.
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, name)
    return messages


async def _left(js: Any, stream: str, name: str) -> bool:
    """Whether the reader still has messages to deliver (True when it cannot be asked)."""
    try:
        info = await js.consumer_info(stream, name)
    except Exception:
        return True
    return bool(info.num_pending)


async def read_stream(
    js: Any, stream: str, subject: str | None = None, batch: int = 500
) -> list[StoredMessage]:
    """Every message currently in ``stream`` (optionally only those on ``subject``, which may
    be a wildcard filter), in stream order."""
    name, wanted = await open_reader(js, stream, [subject] if subject else None)
    return await drain(js, stream, name, wanted, batch)
