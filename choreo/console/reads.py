"""The JetStream reads behind the console's pages.

Each read is a throwaway consumer filtered on subjects, so it costs what it returns, not the
size of the streams (subjects are ``<namespace>.v<N>.<Event>.<order id>``, e.g.
``shop.order.v1.OrderCreated.<order id>``, ``acme.loyalty.v1.PointsAwarded.<order id>``):

- the sagas list reads the newest events that start a saga (``contracts.sagas()``: the shop's
  ``OrderCreated``, in each version), growing a window back from the end of their stream until
  it holds enough, then, from the oldest of them on, the events that move a saga's state: its
  start aggregate's events, its final events and its closing event (``NotificationSent``);
- a saga is read per stream with the per-saga filter ``<namespace>.*.*.<order id>`` (as
  ``choreo saga`` does), and its dead letters with ``choreo.dlq.*.<namespace>.*.*.<order id>``,
  one filter per namespace of the contract packages (``shop.order``, ``acme.loyalty`` ...).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js.errors import NotFoundError

from choreo import contracts, dlq, subjects
from choreo.console.model import (
    SagaState,
    SagaSummary,
    TimelineEvent,
    build_timeline,
    order_id_of_letter,
    parse_time,
    saga_state,
    start_events,
    status_events,
    summarize_sagas,
)
from choreo.envelope import H_MSG_ID, H_TIME
from choreo.streamread import StoredMessage, drain, open_reader, read_stream

MAX_SAGAS = 500
# Order-stream messages per saga, roughly (created, confirmed, shipped or cancelled ...): the
# first window back from the end of the stream.
_WINDOW_PER_SAGA = 6


async def _read_from(
    js: Any, stream: str, filters: list[str], *, start_time: datetime
) -> list[StoredMessage]:
    try:
        name, wanted = await open_reader(js, stream, filters, start_time=start_time)
    except NotFoundError:
        return []  # the stream does not exist yet: nothing was published to it
    return await drain(js, stream, name, wanted)


def _by_stream(event_types: Iterable[str]) -> dict[str, list[str]]:
    """Subject filters of ``event_types``, by the stream that holds them (saga order)."""
    found: dict[str, list[str]] = {}
    for event_type in event_types:
        stream = subjects.stream_name(subjects.context_of(event_type))
        wanted = subjects.event_type_filter(event_type)
        if wanted not in found.setdefault(stream, []):
            found[stream].append(wanted)
    return found


async def _newest_in(js: Any, stream: str, filters: list[str], limit: int) -> list[StoredMessage]:
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return []
    state = info.state
    if not state.messages:
        return []
    window = max(limit * _WINDOW_PER_SAGA, 64)
    while True:
        start = max(state.first_seq, state.last_seq - window + 1)
        name, wanted = await open_reader(js, stream, filters, start_seq=start)
        if wanted >= limit or start == state.first_seq:
            return (await drain(js, stream, name, wanted))[-limit:]
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, name)
        window *= 4


def _stamp(message: StoredMessage) -> tuple[datetime, str, int]:
    at = message.headers.get(H_TIME)
    return (parse_time(at) if at else datetime.min.replace(tzinfo=UTC), message.stream, message.seq)


async def newest_created(js: Any, limit: int) -> list[StoredMessage]:
    """The newest ``limit`` saga-starting events of every saga of the contracts, oldest
    first (each version of each start event; the starts of several sagas merged by time)."""
    found: list[StoredMessage] = []
    for stream, filters in _by_stream(start_events()).items():
        found += await _newest_in(js, stream, filters, limit)
    if len(_by_stream(start_events())) > 1:
        found.sort(key=_stamp)
    return found[-limit:] if limit else []


async def recent_sagas(js: Any, limit: int) -> list[SagaSummary]:
    """The newest ``limit`` sagas, newest first, each with its state and duration."""
    created = [m for m in await newest_created(js, limit) if m.headers.get(H_TIME)]
    if not created:
        return []
    oldest = min(parse_time(m.headers[H_TIME]) for m in created)
    # A second of slack: the broker stamps a message when it stores it, after its ce-time,
    # and the services' clocks may differ a little.
    since = oldest - timedelta(seconds=1)
    # What moves a saga's state: its start aggregate's events, its final events, and the
    # event that closes it.
    moving: list[str] = []
    for shape in contracts.sagas():
        moving += status_events(shape)
        moving += [shape.closing_event] if shape.closing_event else []
    later: list[StoredMessage] = []
    for stream, filters in _by_stream(moving).items():
        later += await _read_from(js, stream, filters, start_time=since)
    return summarize_sagas(created, later)


@dataclass
class SagaDetail:
    order_id: str
    events: list[TimelineEvent]
    state: SagaState
    dead_letters: list[dlq.DeadLetter] = field(default_factory=list)


async def _read_filtered(js: Any, stream: str, subject: str) -> list[StoredMessage]:
    try:
        return await read_stream(js, stream, subject)
    except NotFoundError:
        return []  # the stream does not exist yet


async def _read_all(js: Any, stream: str, filters: list[str]) -> list[StoredMessage]:
    if not filters:
        return []
    try:
        name, wanted = await open_reader(js, stream, filters)
    except NotFoundError:
        return []  # the stream does not exist yet
    return await drain(js, stream, name, wanted)


async def saga_detail(js: Any, order_id: str) -> SagaDetail:
    """One saga's events across every stream, and its dead letters: per-saga filtered reads."""
    # Read now, not at import: the contract packages (CHOREO_CONTRACTS) may add contexts.
    contexts = contracts.contexts()
    messages: list[StoredMessage] = []
    for context in contexts:
        messages += await _read_filtered(
            js, subjects.stream_name(context), subjects.saga_filter(context, order_id)
        )
    events = build_timeline(messages, order_id)
    letters = []
    dlq_filters = subjects.dlq_saga_filters(contexts, order_id)
    for stored in await _read_all(js, subjects.DLQ_STREAM, dlq_filters):
        letter = await dlq.get_dead_letter(js, stored.seq)
        if order_id_of_letter(letter) == order_id:
            letters.append(letter)
    state = saga_state(event.event_type for event in events)
    return SagaDetail(order_id, events, state, letters)


async def dead_letters(js: Any) -> list[dlq.DeadLetter]:
    """Every dead letter, newest first."""
    try:
        letters = await dlq.list_dead_letters(js)
    except NotFoundError:
        return []  # no dead-letter stream yet: nothing was ever filed
    return sorted(letters, key=lambda letter: letter.seq, reverse=True)


@dataclass(frozen=True)
class Replayed:
    """A copy of a dead letter published again (found on the letter's original subject)."""

    stream: str
    seq: int
    msg_id: str


async def replays_of(js: Any, letter: dlq.DeadLetter) -> list[Replayed]:
    """Where a dead letter was replayed: messages on its original subject that name it.

    The subject is ``<namespace>.v<N>.<EventType>.<correlation id>`` of any contract package
    (``shop.order.v1.OrderCreated.<id>``, ``acme.loyalty.v1.PointsAwarded.<id>``); its
    stream is the namespace's."""
    if letter.is_parked_notice:
        return []
    event_name, _, _ = letter.subject.rpartition(".")
    try:
        context = subjects.context_of(event_name)
    except ValueError:
        return []  # not an event's subject: nothing can have been replayed onto it
    stream = subjects.stream_name(context)
    found = []
    for stored in await _read_filtered(js, stream, letter.subject):
        if stored.headers.get(dlq.H_REPLAY_OF) == str(letter.seq):
            found.append(Replayed(stream, stored.seq, stored.headers.get(H_MSG_ID, "")))
    return found
