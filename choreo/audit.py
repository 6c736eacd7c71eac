"""The generic saga audit: the checks any choreography owes, read from its contracts.

The saga's shape is in the contracts (``contracts.sagas()``: the ``saga`` option of the event
that starts it), so no table is written here. For every saga started (a start event in the
streams, in any of its versions), the audit checks:

- ``final``: it reached exactly one final event, or is reported as unfinished while it is
  younger than the grace window;
- ``closing``: the closing event followed its final event, once, when the saga declares one;
- ``compensation``: each failure it met was followed by each of its required compensations,
  exactly once;
- ``duplicate``: no event id was published twice (a replay of a dead letter, which says so in
  its ``choreo-replay-of`` header, is not a second publication);
- ``correlation``: every event of the saga carries the saga's key as its correlation id.

An event belongs to a saga by the saga's key field in its payload (the shop's ``order_id``),
else by its cause (``ce-causationid``), else by its correlation id. Installed packages add
their own checks through the entry point group ``choreo.audits`` (see :func:`add_ons`).
"""

from __future__ import annotations

import inspect
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

from google.protobuf.message import DecodeError

from choreo import contracts, subjects
from choreo.envelope import H_CAUSATION_ID, H_CORRELATION_ID, H_ID, H_SOURCE, H_TIME, H_TYPE
from choreo.errors import ConfigurationError

if TYPE_CHECKING:
    from choreo.streamread import StoredMessage

# A replayed dead letter says so (choreo.dlq.H_REPLAY_OF; not imported here, so that the
# command line can load this module without the broker client).
H_REPLAY_OF = "choreo-replay-of"

#: The entry-point group of audit add-ons (see :func:`add_ons`).
ENTRY_POINT_GROUP = "choreo.audits"

CHECKS = ("final", "closing", "compensation", "duplicate", "correlation")


@dataclass(frozen=True)
class Violation:
    """One finding: which check, of which saga (its name and key), and what was seen."""

    check: str
    saga: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.check}: {self.saga} {self.key or '-'}: {self.message}"


@dataclass(frozen=True)
class AuditEvent:
    """The first copy of an event read back from its stream."""

    event_id: str
    event_type: str  # full name
    source: str
    correlation_id: str
    causation_id: str
    at: datetime | None
    stream: str
    seq: int
    payload_key: dict[str, str] = field(default_factory=dict)  # key field -> its value

    @property
    def name(self) -> str:
        return self.event_type.rsplit(".", 1)[-1]


@dataclass
class SagaAudit:
    """One saga started, with the events that belong to it, in stream-read order."""

    shape: contracts.SagaShape
    key: str
    start: AuditEvent
    events: list[AuditEvent] = field(default_factory=list)

    @property
    def finals(self) -> list[AuditEvent]:
        return [e for e in self.events if e.event_type in self.shape.final_events]

    @property
    def last_at(self) -> datetime | None:
        times = [e.at for e in self.events if e.at is not None]
        return max(times) if times else None


@dataclass
class AuditReport:
    sagas: list[SagaAudit] = field(default_factory=list)
    # "order: OrderShipped" -> how many sagas ended there; "order: unfinished" ...
    outcomes: Counter[str] = field(default_factory=Counter)
    unfinished: list[str] = field(default_factory=list)  # keys still within the grace window
    events: Counter[str] = field(default_factory=Counter)  # by short name, first copies
    # Events of the contracts that belong to no saga started (e.g. its start aged out).
    orphans: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)  # open ones, by reason
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def violated(self, check: str, saga: str, key: str, message: str) -> None:
        self.violations.append(Violation(check, saga, key, message))

    def summary(self) -> list[str]:
        """The lines ``choreo audit`` prints before the violations."""
        by_saga = Counter(saga.shape.name for saga in self.sagas)
        lines = []
        for name in sorted(by_saga) or ["(none)"]:
            if name == "(none)":
                lines.append("no saga started")
                continue
            ends = ", ".join(
                f"{outcome.split(': ', 1)[1]} {count}"
                for outcome, count in sorted(self.outcomes.items())
                if outcome.startswith(f"{name}: ")
            )
            lines.append(f"{by_saga[name]} {name} sagas: {ends}")
        if self.unfinished:
            shown = ", ".join(self.unfinished[:5]) + (" ..." if len(self.unfinished) > 5 else "")
            lines.append(f"unfinished within the grace window: {len(self.unfinished)} ({shown})")
        if self.orphans:
            lines.append(f"events of no saga started (its start aged out?): {self.orphans}")
        lines.append(
            "open dead letters: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.dead_letters.items())) or "none")
        )
        return lines


def _parse_time(raw: str) -> datetime | None:
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None


def _key_values(event_type: str, body: bytes, key_fields: Iterable[str]) -> dict[str, str]:
    cls = contracts.event_classes()[event_type]
    fields = [name for name in key_fields if name in cls.DESCRIPTOR.fields_by_name]
    if not fields:
        return {}
    try:
        message = cls.FromString(body)
    except DecodeError:
        return {}
    values = {name: getattr(message, name) for name in fields}
    return {name: value for name, value in values.items() if isinstance(value, str) and value}


def check(
    messages: Iterable[StoredMessage],
    *,
    now: datetime | None = None,
    grace: timedelta = timedelta(seconds=60),
    shapes: Sequence[contracts.SagaShape] | None = None,
) -> AuditReport:
    """Audit stored messages (every stream of the contracts) against the sagas' shapes.

    Pure: :func:`audit` reads the streams and calls it. A saga without its final event (or,
    after it, its closing event) whose last event is younger than ``grace`` is reported as
    unfinished, not as a violation.
    """
    shapes = list(contracts.sagas() if shapes is None else shapes)
    now = now or datetime.now(UTC)
    report = AuditReport()
    known = contracts.event_classes()
    key_fields = {shape.key_field for shape in shapes}

    copies: Counter[str] = Counter()
    first: dict[str, AuditEvent] = {}
    types: dict[str, str] = {}
    for message in messages:
        headers = message.headers
        event_id, event_type = headers.get(H_ID, ""), headers.get(H_TYPE, "")
        if not event_id or event_type not in known:
            continue  # not an event of the contracts (poison is the dead-letter queue's)
        if headers.get(H_REPLAY_OF):
            continue  # a replayed dead letter: the same event again, on purpose
        copies[event_id] += 1
        types.setdefault(event_id, event_type)
        if event_id in first:
            continue
        first[event_id] = AuditEvent(
            event_id=event_id,
            event_type=event_type,
            source=headers.get(H_SOURCE, ""),
            correlation_id=headers.get(H_CORRELATION_ID, ""),
            causation_id=headers.get(H_CAUSATION_ID, ""),
            at=_parse_time(headers.get(H_TIME, "")),
            stream=message.stream,
            seq=message.seq,
            payload_key=_key_values(event_type, message.data, key_fields),
        )

    # The sagas started: one per start event's key (a second start with the same key is a
    # duplicate start of the same saga, reported by the final check if it leads anywhere).
    sagas: dict[tuple[str, str], SagaAudit] = {}
    owner: dict[str, SagaAudit] = {}
    for event in first.values():
        shape = next((s for s in shapes if s.starts_with(event.event_type)), None)
        if shape is None:
            continue
        key = event.payload_key.get(shape.key_field, "") or event.correlation_id
        saga = sagas.get((shape.name, key))
        if saga is None:
            saga = sagas[(shape.name, key)] = SagaAudit(shape, key, event)
        owner[event.event_id] = saga

    by_key: dict[str, list[SagaAudit]] = defaultdict(list)
    for saga in sagas.values():
        by_key[saga.key].append(saga)

    def by_payload(event: AuditEvent) -> SagaAudit | None:
        for name, value in event.payload_key.items():
            for saga in by_key.get(value, []):
                if saga.shape.key_field == name:
                    return saga
        return None

    pending = [e for e in first.values() if e.event_id not in owner]
    for event in pending:
        found = by_payload(event)
        if found is not None:
            owner[event.event_id] = found
    # Then by cause, as far as the chains go (a cause is usually read before its effects).
    progress = True
    while progress:
        progress = False
        for event in pending:
            if event.event_id not in owner and event.causation_id in owner:
                owner[event.event_id] = owner[event.causation_id]
                progress = True
    for event in pending:
        if event.event_id in owner:
            continue
        candidates = by_key.get(event.correlation_id, [])
        if len(candidates) == 1:
            owner[event.event_id] = candidates[0]
        else:
            report.orphans += 1

    for event in first.values():
        report.events[event.name] += 1
        saga = owner.get(event.event_id)
        if saga is not None:
            saga.events.append(event)

    for event_id, count in sorted(copies.items()):
        if count > 1:
            saga = owner.get(event_id)
            report.violated(
                "duplicate",
                saga.shape.name if saga else "-",
                saga.key if saga else "",
                f"event id {event_id} ({types[event_id].rsplit('.', 1)[-1]}) published"
                f" {count} times",
            )

    for saga in sorted(sagas.values(), key=lambda s: (s.shape.name, s.start.at or now, s.key)):
        report.sagas.append(saga)
        _check_saga(report, saga, now=now, grace=grace)
    return report


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _check_saga(report: AuditReport, saga: SagaAudit, *, now: datetime, grace: timedelta) -> None:
    shape, key = saga.shape, saga.key
    last = saga.last_at
    young = last is not None and now - last < grace
    counts = Counter(event.event_type for event in saga.events)

    for event in saga.events:
        if event.correlation_id != key:
            report.violated(
                "correlation",
                shape.name,
                key,
                f"{event.name} {event.event_id} has correlation id {event.correlation_id!r}",
            )

    finals = saga.finals
    if len(finals) > 1:
        names = ", ".join(e.name for e in finals)
        report.violated("final", shape.name, key, f"{len(finals)} final events: {names}")
    finished = len(finals) >= 1
    if not finished:
        if young:
            report.unfinished.append(key)
            report.outcomes[f"{shape.name}: unfinished"] += 1
        else:
            report.outcomes[f"{shape.name}: stuck"] += 1
            names = ", ".join(_short(name) for name in shape.final_events)
            report.violated(
                "final",
                shape.name,
                key,
                f"no final event ({names}) within {grace.total_seconds():g}s; last event"
                f" {_latest(saga.events)}",
            )
    else:
        report.outcomes[f"{shape.name}: {finals[0].name}"] += 1

    if shape.closing_event:
        closings = counts[shape.closing_event]
        if closings > 1:
            report.violated(
                "closing", shape.name, key, f"{closings} {_short(shape.closing_event)}, expected 1"
            )
        elif finished and not closings:
            if young:
                if key not in report.unfinished:
                    report.unfinished.append(key)
            else:
                report.violated(
                    "closing",
                    shape.name,
                    key,
                    f"{finals[0].name} was never followed by {_short(shape.closing_event)}",
                )

    # A compensation may still be on its way while the saga is (the young one's is reported
    # as unfinished); once it is done (its final event, then its closing event), it is owed.
    done = finished and (not shape.closing_event or counts[shape.closing_event] > 0)
    for failure, required in shape.compensations.items():
        if not counts[failure]:
            continue
        for compensation in required:
            seen = counts[compensation]
            if seen == 1 or (seen == 0 and young and not done):
                continue
            report.violated(
                "compensation",
                shape.name,
                key,
                f"{_short(failure)} needs one {_short(compensation)}, saw {seen}",
            )


async def read_events(js: Any) -> list[StoredMessage]:
    """Every message of every stream of the contracts (a stream not created yet is empty)."""
    from nats.js.errors import NotFoundError

    from choreo.streamread import read_stream

    messages: list[StoredMessage] = []
    for context in contracts.contexts():
        try:
            messages += await read_stream(js, subjects.stream_name(context))
        except NotFoundError:
            continue
    return messages


async def audit(
    js: Any, *, grace: timedelta = timedelta(seconds=60), now: datetime | None = None
) -> AuditReport:
    """Read every stream of the contracts and check every saga started (see the module)."""
    from nats.js.errors import NotFoundError

    from choreo import dlq

    report = check(await read_events(js), now=now, grace=grace)
    try:
        letters = await dlq.list_dead_letters(js, check=False)
    except NotFoundError:
        letters = []  # no dead-letter stream: nothing was ever filed
    for letter in letters:
        if letter.resolution is None:
            report.dead_letters[letter.reason] += 1
    return report


class AddOn(Protocol):
    """What an entry point of ``choreo.audits`` names: called with the parsed arguments of
    ``choreo audit`` and the generic report, it returns more violations (a coroutine may
    return them). Optional methods: ``add_arguments(parser)`` adds its options to
    ``choreo audit``; ``settle(args)`` (a coroutine) waits for the system to be at rest
    before the streams are read."""

    def __call__(
        self, args: Any, report: AuditReport
    ) -> Iterable[Violation] | Awaitable[Iterable[Violation]]: ...


def add_ons() -> dict[str, AddOn]:
    """Every installed audit add-on (``choreo.audits``), by name.

    A package declares one in its ``pyproject.toml``::

        [project.entry-points."choreo.audits"]
        ledgers = "acme_shop.audit:check_ledgers"
    """
    found: dict[str, AddOn] = {}
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            loaded = entry.load()
        except ImportError as exc:
            raise ConfigurationError(
                f"audit add-on {entry.name!r} ({entry.value}) cannot be imported: {exc};"
                " reinstall the package that declares it"
            ) from None
        if not callable(loaded):
            raise ConfigurationError(f"{ENTRY_POINT_GROUP} {entry.name!r} is not callable")
        found[entry.name] = loaded
    return found


async def run_add_on(add_on: AddOn, args: Any, report: AuditReport) -> list[Violation]:
    result = add_on(args, report)
    if inspect.isawaitable(result):
        result = await result
    return list(result)


async def settle(add_on: AddOn, args: Any) -> bool:
    """Run an add-on's ``settle(args)`` if it has one; whether the system came to rest."""
    hook: Callable[[Any], Awaitable[bool]] | None = getattr(add_on, "settle", None)
    return True if hook is None else bool(await hook(args))


def _latest(events: list[AuditEvent]) -> str:
    """The saga's last event by its own time (streams are read one after another, so the last
    one read is not the last to happen)."""
    if not events:
        return "-"
    timed = [event for event in events if event.at is not None]
    return max(timed, key=lambda event: event.at or datetime.min).name if timed else events[-1].name
