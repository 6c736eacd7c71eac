"""Streams: one per bounded context plus the dead-letter stream, each with one owner.

The service of a context owns its stream: it creates it, and may grow its limits (a longer
``max_age`` or ``duplicate_window``, more replicas), but never shrinks them: a shorter
``max_age`` deletes messages the moment it is applied, so a service started with a smaller
setting than the stream has fails at start-up and says how to fix it. Every other stream (the
ones it consumes, and the dead-letter stream) is created if absent, so start-up order does not
matter (a context's stream created by another service is a placeholder whose limits its owner
sets when it starts), but never changed: when every service rewrote every stream, the last one
to start won.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from nats.js import api
from nats.js.errors import BadRequestError, NotFoundError

from choreo import contracts, subjects
from choreo.errors import ConfigurationError
from choreo.settings import RuntimeSettings

log = logging.getLogger(__name__)

DLQ_MAX_AGE_S = 30 * 24 * 3600.0
# A consumer that dies between filing a dead letter and acking the message files it again on
# redelivery (after ack_wait); the letter's derived Nats-Msg-Id must still be deduplicated
# then, however short the event streams' window is set.
DLQ_DUPLICATE_WINDOW_S = 600.0


class StreamConflict(ConfigurationError):
    """Applying this service's stream settings would lose data the stream already keeps."""


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


# The limits whose decrease drops data, with the variable that sets each (for the fix).
_LIMITS = (
    ("max_age", "CHOREO_MAX_AGE_S"),
    ("duplicate_window", "CHOREO_DUPLICATE_WINDOW_S"),
    ("num_replicas", "CHOREO_STREAM_REPLICAS"),
)


def _limit(config: api.StreamConfig, name: str) -> float:
    value = getattr(config, name) or 0
    if name == "max_age" and not value:
        return float("inf")  # 0 is "keep forever" on the broker
    return float(value)


def shrinking(existing: api.StreamConfig, wanted: api.StreamConfig) -> list[str]:
    """Why applying ``wanted`` over ``existing`` would lose data (empty: it would not)."""
    problems = []
    for name, variable in _LIMITS:
        have, want = _limit(existing, name), _limit(wanted, name)
        if want < have:
            problems.append(
                f"{name} would shrink from {have:g} to {want:g} (set {variable}={have:g}"
                f" or more, or shrink the stream on purpose with `nats stream edit"
                f" {wanted.name}` first)"
            )
    return problems


def _grows(existing: api.StreamConfig, wanted: api.StreamConfig) -> bool:
    return any(_limit(wanted, name) > _limit(existing, name) for name, _ in _LIMITS) or sorted(
        existing.subjects or []
    ) != sorted(wanted.subjects or [])


async def _existing(js: Any, name: str) -> api.StreamConfig | None:
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        return None
    config: api.StreamConfig = info.config
    return config


async def create_if_absent(js: Any, config: api.StreamConfig) -> api.StreamConfig | None:
    """Create the stream unless it exists; returns the existing configuration, if any."""
    assert config.name is not None, "a stream configuration names its stream"
    existing = await _existing(js, config.name)
    if existing is not None:
        return existing
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Another service created it with other settings between our look and our add.
        existing = await _existing(js, config.name)
        if existing is None:
            raise
        return existing
    return None


# A stream created by a service that does not own it carries this in its description until its
# owner starts: only the owner publishes to its stream, so a placeholder holds nothing the
# owner's settings could drop, and the owner sets them whatever they are.
PLACEHOLDER = "(placeholder until its owner starts)"


def placeholder_config(config: api.StreamConfig) -> api.StreamConfig:
    return replace(config, description=f"{config.description} {PLACEHOLDER}")


async def ensure_owned_stream(js: Any, config: api.StreamConfig, owner: str) -> None:
    """Create the owner's stream, or grow it to ``config``; refuse to shrink it."""
    existing = await create_if_absent(js, config)
    if existing is None:
        return
    if PLACEHOLDER in (existing.description or ""):
        log.info("stream %s: taking over the placeholder with %s's settings", config.name, owner)
        await js.update_stream(config)
        return
    problems = shrinking(existing, config)
    if problems:
        raise StreamConflict(
            f"stream {config.name} (owned by the {owner} service) already keeps more than this"
            f" start-up asks for; refusing to lose data: {'; '.join(problems)}"
        )
    if _grows(existing, config):
        log.info("stream %s: growing its limits to this service's settings", config.name)
        await js.update_stream(config)


async def ensure_streams(
    js: Any, settings: RuntimeSettings, contexts: tuple[str, ...] | None = None
) -> None:
    """The streams a service needs: its own context's (owned: ``settings.service`` is the
    context's service, ``subjects.service_of``), every other context's (default: every context
    of the contracts) and the dead-letter stream (created if absent only).

    On a broker with per-service permissions (``choreo.permissions``: a credentials file is
    set) a service may not create another context's stream at all; it waits for the owner
    instead (its consumers bind once the stream exists)."""
    least_privilege = bool(settings.nats_credentials_file)
    if contexts is None:
        contexts = contracts.contexts()
        named = settings.service != RuntimeSettings.service  # not a tool's default settings
        if named and not any(
            subjects.service_of(context) == settings.service for context in contexts
        ):
            # Legal for a service that only consumes; a mistake for one that publishes events.
            log.warning(
                "service %s owns no context of the contract packages %s, so no stream is made"
                " for events it emits: add its generated package with choreo.contracts.use(...)"
                " in its build, or with %s",
                settings.service,
                ", ".join(contracts.contract_packages()),
                contracts.PACKAGES_VARIABLE,
            )
    for context in contexts:
        config = context_stream_config(context, settings)
        if subjects.service_of(context) == settings.service:
            await ensure_owned_stream(js, config, settings.service)
        elif least_privilege:
            continue
        else:
            # Not ours to change, whatever its limits: the owner decides them.
            await create_if_absent(js, placeholder_config(config))
    await create_if_absent(js, dlq_stream_config(settings))


def __getattr__(name: str) -> Any:
    # Kept for callers of the old hand-written tuple: the contexts now come from the contracts.
    if name == "CONTEXTS":
        return contracts.contexts()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
