"""Streams: one per bounded context plus the dead-letter stream, declared idempotently."""

from __future__ import annotations

from typing import Any

from nats.js import api
from nats.js.errors import NotFoundError

from choreo import subjects
from choreo.contracts import CONTEXTS
from choreo.settings import RuntimeSettings

DLQ_MAX_AGE_S = 30 * 24 * 3600.0
# A consumer that dies between filing a dead letter and acking the message files it again on
# redelivery (after ack_wait); the letter's derived Nats-Msg-Id must still be deduplicated
# then, however short the event streams' window is set.
DLQ_DUPLICATE_WINDOW_S = 600.0


def context_stream_config(context: str, settings: RuntimeSettings) -> api.StreamConfig:
    return api.StreamConfig(
        name=subjects.stream_name(context),
        description=f"choreo events of the {context} context",
        subjects=subjects.stream_subjects(context),
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        duplicate_window=settings.duplicate_window_s,
        max_age=settings.max_age_s,
        num_replicas=settings.stream_replicas,
    )


def dlq_stream_config(settings: RuntimeSettings) -> api.StreamConfig:
    return api.StreamConfig(
        name=subjects.DLQ_STREAM,
        description="choreo dead letters: poison and exhausted messages, with their reasons",
        subjects=[f"{subjects.DLQ_PREFIX}.>"],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        duplicate_window=max(settings.duplicate_window_s, DLQ_DUPLICATE_WINDOW_S),
        max_age=max(DLQ_MAX_AGE_S, settings.max_age_s),
        num_replicas=settings.stream_replicas,
    )


async def ensure_stream(js: Any, config: api.StreamConfig) -> None:
    """Create the stream, or bring an existing one to this configuration."""
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        return
    await js.update_stream(config)


async def ensure_streams(
    js: Any, settings: RuntimeSettings, contexts: tuple[str, ...] = CONTEXTS
) -> None:
    for context in contexts:
        await ensure_stream(js, context_stream_config(context, settings))
    await ensure_stream(js, dlq_stream_config(settings))
