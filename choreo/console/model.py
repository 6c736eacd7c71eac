"""What the console shows, built from stored messages: no I/O here, so it is tested directly.

A saga is told by its events: every event carries the saga's correlation id (its key, the
order id in the shop), names its cause (``ce-causationid``) and counts its hops from the
command (``ce-chaindepth``). What starts and ends a saga, its failures and compensations come
from the contracts (the ``saga`` option of its start event, ``contracts.sagas()``): its state
follows from which of those events exist, and it is over once a final event happened and then
its closing event, if it declares one (the shop's ``NotificationSent``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from choreo import contracts, dlq, subjects
from choreo.envelope import (
    H_CAUSATION_ID,
    H_CHAIN_DEPTH,
    H_CORRELATION_ID,
    H_ID,
    H_SOURCE,
    H_TIME,
    H_TYPE,
)
from choreo.streamread import StoredMessage

# The saga's shape comes from the contracts (``contracts.sagas()``, the ``saga`` option of the
# event that starts it): which events start a saga (in every schema version on the wire), which
# end it, which are failures and compensations, and which event closes it. The status of a
# saga is named after the latest event of the aggregate that started it (``OrderConfirmed`` ->
# ``confirmed``); a final event wins over the others, and one that ends the saga in failure
# wins over a success ("a cancellation wins over everything; a shipment over a confirmation").
PENDING = "pending"
_FAILED_RANK = 2_000_000
_SUCCEEDED_RANK = 1_000_000


def start_events() -> tuple[str, ...]:
    """Every event that starts a saga of the contracts, each schema version of it included."""
    return tuple(name for shape in contracts.sagas() for name in shape.start_events)


def failure_events() -> frozenset[str]:
    return frozenset(name for shape in contracts.sagas() for name in shape.failure_events)


def compensation_events() -> frozenset[str]:
    """The union of every failure's required compensations, in every saga."""
    return frozenset(name for shape in contracts.sagas() for name in shape.compensation_events)


def _status_name(event_type: str, aggregate: str) -> str:
    """``OrderConfirmed`` of aggregate ``order`` -> ``confirmed``; ``TripBooked`` -> ``booked``."""
    name = short_name(event_type)
    prefix = "".join(part.capitalize() for part in re.split(r"[_\W]+", aggregate))
    if prefix and name.startswith(prefix) and len(name) > len(prefix):
        name = name[len(prefix) :]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@functools.lru_cache(maxsize=64)
def status_events(shape: contracts.SagaShape) -> Mapping[str, tuple[str, int]]:
    """The events that move a saga's status, each with its status and rank: the other events
    of the start event's aggregate type in its context (in the order they are declared), and
    the final events."""
    classes = contracts.event_classes()
    start = classes.get(shape.start_event)
    aggregate = contracts.aggregate_type(start) if start is not None else ""
    found: dict[str, tuple[str, int]] = {}
    context = subjects.context_of(shape.start_event)
    for index, (name, cls) in enumerate(classes.items(), 1):
        if shape.starts_with(name) or subjects.context_of(name) != context:
            continue
        if contracts.aggregate_type(cls) == aggregate:
            found[name] = (_status_name(name, aggregate), index)
    for name in shape.final_events:
        rank = _SUCCEEDED_RANK if name in shape.success_events else _FAILED_RANK
        found[name] = (_status_name(name, aggregate), rank + found.get(name, ("", 0))[1])
    return MappingProxyType(found)


def saga_of_events(event_types: Iterable[str]) -> contracts.SagaShape | None:
    """The saga whose start is among ``event_types``; the only saga of the contracts when
    none is (a saga whose start aged out of its stream); None when that does not tell."""
    shapes = contracts.sagas()
    for event_type in event_types:
        for shape in shapes:
            if shape.starts_with(event_type):
                return shape
    return shapes[0] if len(shapes) == 1 else None


# Payload fields an operator does not need to read on a screen (the payment token travels in
# OrderCreated and InventoryReserved).
_SECRET_FIELD = re.compile(r"token|secret|password", re.IGNORECASE)
MASK = "***"


def short_name(full_name: str) -> str:
    return full_name.rsplit(".", 1)[-1]


def kind_of(event_type: str) -> str:
    """``failure``, ``compensation`` or ``step``: how the diagram and the timeline mark a
    full event name (the failures and compensations of the contracts' sagas)."""
    if event_type in failure_events():
        return "failure"
    if event_type in compensation_events():
        return "compensation"
    return "step"


def parse_time(raw: str) -> datetime:
    return datetime.fromisoformat(raw.replace("Z", "+00:00"))


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: MASK if _SECRET_FIELD.search(k) else _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(item) for item in value]
    return value


def decode_payload(full_type: str, body: bytes) -> dict[str, Any]:
    """The Protobuf body as JSON (field names as in ``proto/``, secrets masked); a body that is
    not a known event says why instead."""
    cls = contracts.event_classes().get(full_type)
    if cls is None:
        return {"_error": f"unknown event type {full_type!r}", "_bytes": len(body)}
    try:
        message = cls.FromString(body)
    except DecodeError as exc:
        return {"_error": f"not a valid {full_type} body: {exc}", "_bytes": len(body)}
    decoded = MessageToDict(message, preserving_proto_field_name=True)
    masked: dict[str, Any] = _masked(decoded)
    return masked


@dataclass(frozen=True)
class TimelineEvent:
    """One stored copy of an event of the saga, placed on its timeline."""

    stream: str
    seq: int
    at: datetime
    service: str
    event_type: str  # full name, e.g. shop.order.v1.OrderCreated
    event_id: str
    causation_id: str
    cause_type: str  # full name of the cause within this saga, "" for the command
    chain_depth: int
    offset_ms: float  # since the saga's first event
    hop_ms: float | None  # since its cause was published; None when the cause is the command
    payload: dict[str, Any]
    copy: bool = False  # a later copy of an event id already shown (a replay)
    replay_of: str = ""  # the dead letter it replays (choreo-replay-of), if any

    @property
    def name(self) -> str:
        return short_name(self.event_type)

    @property
    def kind(self) -> str:
        return kind_of(self.event_type)

    def as_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "seq": self.seq,
            "time": self.at.isoformat(),
            "service": self.service,
            "event_type": self.event_type,
            "event": self.name,
            "kind": self.kind,
            "event_id": self.event_id,
            "causation_id": self.causation_id,
            "cause": short_name(self.cause_type) if self.cause_type else "command",
            "chain_depth": self.chain_depth,
            "offset_ms": round(self.offset_ms, 3),
            "hop_ms": None if self.hop_ms is None else round(self.hop_ms, 3),
            "payload": self.payload,
            "copy": self.copy,
            "replay_of": self.replay_of or None,
        }


def build_timeline(messages: Iterable[StoredMessage], correlation_id: str) -> list[TimelineEvent]:
    """Every stored copy of the saga's events in time order (ties: fewer hops first), with each
    hop's latency measured from its cause's first copy. Messages of other sagas are dropped
    (a hashed subject token could in principle be shared)."""
    mine = [m for m in messages if m.headers.get(H_CORRELATION_ID) == correlation_id]
    mine = [m for m in mine if m.headers.get(H_ID) and m.headers.get(H_TIME)]

    def depth(m: StoredMessage) -> int:
        try:
            return int(m.headers.get(H_CHAIN_DEPTH, "0"))
        except ValueError:
            return 0

    mine.sort(key=lambda m: (parse_time(m.headers[H_TIME]), depth(m), m.stream, m.seq))
    if not mine:
        return []
    start = parse_time(mine[0].headers[H_TIME])
    first_copy: dict[str, TimelineEvent] = {}
    events: list[TimelineEvent] = []
    for m in mine:
        headers = m.headers
        at = parse_time(headers[H_TIME])
        event_id = headers[H_ID]
        causation = headers.get(H_CAUSATION_ID, "")
        cause = first_copy.get(causation)
        full_type = headers.get(H_TYPE) or subjects.event_type_of_subject(m.subject)
        event = TimelineEvent(
            stream=m.stream,
            seq=m.seq,
            at=at,
            service=headers.get(H_SOURCE, "?"),
            event_type=full_type,
            event_id=event_id,
            causation_id=causation,
            cause_type=cause.event_type if cause else "",
            chain_depth=depth(m),
            offset_ms=(at - start).total_seconds() * 1000,
            hop_ms=(at - cause.at).total_seconds() * 1000 if cause else None,
            payload=decode_payload(full_type, m.data),
            copy=event_id in first_copy,
            replay_of=headers.get(dlq.H_REPLAY_OF, ""),
        )
        first_copy.setdefault(event_id, event)
        events.append(event)
    return events


@dataclass(frozen=True)
class SagaState:
    status: str  # pending, then named after the start aggregate's events: confirmed, shipped ...
    notified: bool  # the saga's closing event happened (the customer was told the outcome)
    final: bool = False  # a final event of the saga happened
    closing_event: str = ""  # what closes the saga after its final event ("": nothing)
    succeeded: bool = False  # its final event is a success event

    @property
    def done(self) -> bool:
        return self.final and (self.notified or not self.closing_event)

    @property
    def kind(self) -> str:
        """``success``, ``failure`` (a final event that is not a success) or ``running``."""
        if not self.final:
            return "running"
        return "success" if self.succeeded else "failure"

    @property
    def outcome(self) -> str:
        if self.done:
            return self.status
        if self.final:
            return f"{self.status}, waiting for {short_name(self.closing_event)}"
        return "in progress"


def saga_state(event_types: Iterable[str], shape: contracts.SagaShape | None = None) -> SagaState:
    """The saga's state from the full names of its events (any order). ``shape``: the saga
    they belong to; by default the one whose start event is among them."""
    types = list(event_types)
    shape = shape or saga_of_events(types)
    if shape is None:
        return SagaState(PENDING, False)
    moves = status_events(shape)
    status, rank = PENDING, 0
    notified = False
    for event_type in types:
        reached = moves.get(event_type)
        if reached and reached[1] > rank:
            status, rank = reached
        notified = notified or event_type == shape.closing_event
    final = rank >= _SUCCEEDED_RANK
    return SagaState(
        status,
        notified,
        final=final,
        closing_event=shape.closing_event,
        succeeded=final and rank < _FAILED_RANK,
    )


@dataclass
class SagaSummary:
    order_id: str  # the saga's key (its correlation id), the order id in the shop
    customer_id: str  # the start event's customer_id, if it has one
    started_at: datetime
    state: SagaState
    saga: str = ""  # the saga's name (its option's ``name``)
    finished_at: datetime | None = None  # when the customer was told (a done saga)
    last_event_at: datetime | None = None
    events: list[str] = field(default_factory=list)  # full names, in time order

    @property
    def duration_s(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def as_json(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "saga": self.saga,
            "customer_id": self.customer_id,
            "started_at": self.started_at.isoformat(),
            "status": self.state.status,
            "notified": self.state.notified,
            "done": self.state.done,
            "outcome": self.state.outcome,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_s": None if self.duration_s is None else round(self.duration_s, 3),
            "last_event_at": self.last_event_at.isoformat() if self.last_event_at else None,
        }


def summarize_sagas(
    created: Iterable[StoredMessage], later: Iterable[StoredMessage]
) -> list[SagaSummary]:
    """One row per saga-starting event in ``created``, newest first, with its state from the
    events in ``later`` (events of sagas not listed are ignored)."""
    sagas: dict[str, SagaSummary] = {}
    shapes: dict[str, contracts.SagaShape] = {}
    for m in created:
        order_id = m.headers.get(H_CORRELATION_ID, "")
        if not order_id or order_id in sagas or not m.headers.get(H_TIME):
            continue
        start_event = m.headers.get(H_TYPE) or subjects.event_type_of_subject(m.subject)
        shape = contracts.saga_of(start_event)
        if shape is None:
            continue  # not the start of a saga of the contracts
        shapes[order_id] = shape
        payload = decode_payload(start_event, m.data)
        started = parse_time(m.headers[H_TIME])
        sagas[order_id] = SagaSummary(
            order_id=order_id,
            customer_id=str(payload.get("customer_id", "")),
            started_at=started,
            state=saga_state([start_event], shape),
            saga=shape.name,
            last_event_at=started,
            events=[start_event],
        )
    timed = [
        (parse_time(m.headers[H_TIME]), m)
        for m in later
        if m.headers.get(H_CORRELATION_ID) in sagas and m.headers.get(H_TIME)
    ]
    timed.sort(key=lambda pair: pair[0])
    for at, m in timed:
        summary = sagas[m.headers[H_CORRELATION_ID]]
        event_type = m.headers.get(H_TYPE) or subjects.event_type_of_subject(m.subject)
        summary.events.append(event_type)
        summary.last_event_at = max(at, summary.last_event_at or at)
        was_done = summary.state.done
        summary.state = saga_state(summary.events, shapes[summary.order_id])
        if summary.state.done and not was_done:
            summary.finished_at = at
    return sorted(sagas.values(), key=lambda s: s.started_at, reverse=True)


def order_id_of_letter(letter: dlq.DeadLetter) -> str:
    """The saga a dead letter belongs to: its correlation id, else its subject's last token."""
    return letter.headers.get(H_CORRELATION_ID) or letter.subject.rsplit(".", 1)[-1]


def letter_event_type(letter: dlq.DeadLetter) -> str:
    return letter.event_type


def letter_json(letter: dlq.DeadLetter, *, with_payload: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "seq": letter.seq,
        "service": letter.service,
        "event_type": letter_event_type(letter),
        "event": short_name(letter_event_type(letter)),
        "reason": letter.reason,
        "detail": letter.detail,
        "subject": letter.subject,
        "order_id": order_id_of_letter(letter),
        "deliveries": letter.deliveries,
        "dead_lettered_at": letter.dead_lettered_at,
        "alarm": letter.alarm,
        "compensated": letter.compensated,
        "parked_notice": letter.is_parked_notice,
        "suspect": letter.suspect,
        "suspicions": list(letter.suspicions),
        "source_gone": letter.source_gone or None,
        "replay_of": letter.headers.get(dlq.H_REPLAY_OF),
    }
    if with_payload:
        data["headers"] = masked_headers(letter.headers)
        data["payload"] = (
            None
            if letter.is_parked_notice
            else decode_payload(letter_event_type(letter), letter.body)
        )
    return data


def masked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: MASK if _SECRET_FIELD.search(k) else v for k, v in sorted(headers.items())}
