"""What the console shows, built from stored messages: no I/O here, so it is tested directly.

A saga is told by its events: every event carries the saga's correlation id (the order id),
names its cause (``ce-causationid``) and counts its hops from the command (``ce-chaindepth``).
The order's state follows from which of the order service's events exist, and the saga is over
once the customer has been told about a final state (``NotificationSent``), as ``WatchOrder``
sees it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
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

# The command starts a saga with this event (``PlaceOrder`` emits it; checked against the
# contracts by the tests), and these events of the order service move the order along.
START_EVENT = "shop.order.v1.OrderCreated"
# Every schema version of it that may be on the wire (during a migration both are, see
# docs/evolution.md): a saga is listed by whichever comes first.
START_EVENTS = (START_EVENT, "shop.order.v2.OrderCreated")
STATUS_EVENTS = {
    "shop.order.v1.OrderConfirmed": "confirmed",
    "shop.order.v1.OrderShipped": "shipped",
    "shop.order.v1.OrderCancelled": "cancelled",
}
NOTIFIED_EVENT = "shop.notification.v1.NotificationSent"
FINAL_STATUSES = ("shipped", "cancelled")
# A cancellation wins over everything; a shipment over a confirmation.
_STATUS_RANK = {"pending": 0, "confirmed": 1, "shipped": 2, "cancelled": 3}

# The business failures and the compensations they require (README, "The saga"; the same
# table as services.audit.REQUIRED_COMPENSATIONS, which a test compares with these).
FAILURE_EVENTS = frozenset({"InventoryReservationFailed", "PaymentFailed", "ShippingFailed"})
COMPENSATION_EVENTS = frozenset({"OrderCancelled", "InventoryReleased", "PaymentRefunded"})

# Payload fields an operator does not need to read on a screen (the payment token travels in
# OrderCreated and InventoryReserved).
_SECRET_FIELD = re.compile(r"token|secret|password", re.IGNORECASE)
MASK = "***"


def short_name(full_name: str) -> str:
    return full_name.rsplit(".", 1)[-1]


def kind_of(event_type: str) -> str:
    """``failure``, ``compensation`` or ``step``: how the diagram and the timeline mark it."""
    name = short_name(event_type)
    if name in FAILURE_EVENTS:
        return "failure"
    if name in COMPENSATION_EVENTS:
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
    status: str  # pending, confirmed, shipped, cancelled
    notified: bool  # the customer was told about the final state

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATUSES and self.notified

    @property
    def outcome(self) -> str:
        if self.done:
            return self.status
        if self.status in FINAL_STATUSES:
            return f"{self.status}, customer not notified yet"
        return "in progress"


def saga_state(event_types: Iterable[str]) -> SagaState:
    """The order's state from the full names of the saga's events (any order)."""
    status = "pending"
    notified = False
    for event_type in event_types:
        reached = STATUS_EVENTS.get(event_type)
        if reached and _STATUS_RANK[reached] > _STATUS_RANK[status]:
            status = reached
        notified = notified or event_type == NOTIFIED_EVENT
    return SagaState(status, notified)


@dataclass
class SagaSummary:
    order_id: str
    customer_id: str
    started_at: datetime
    state: SagaState
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
    """One row per ``OrderCreated`` in ``created``, newest first, with its state from the
    order and notification events in ``later`` (events of sagas not listed are ignored)."""
    sagas: dict[str, SagaSummary] = {}
    for m in created:
        order_id = m.headers.get(H_CORRELATION_ID, "")
        if not order_id or order_id in sagas or not m.headers.get(H_TIME):
            continue
        start_event = m.headers.get(H_TYPE) or START_EVENT
        payload = decode_payload(start_event, m.data)
        started = parse_time(m.headers[H_TIME])
        sagas[order_id] = SagaSummary(
            order_id=order_id,
            customer_id=str(payload.get("customer_id", "")),
            started_at=started,
            state=SagaState("pending", False),
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
        summary.state = saga_state(summary.events)
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
