"""Dead letters: what a consumer gave up on, with why, and a way to try again.

A dead letter keeps the original body and headers and adds ``choreo-dlq-*`` headers: reason,
detail, service, original subject, stream sequence and delivery count. Its ``Nats-Msg-Id`` is
derived from the original stream position, so a consumer that crashes between dead-lettering
and acking does not file the same letter twice.

Who filed a letter, and what it may replay: its writer chooses every header, so no header is
trusted for either. The *service* is the token after ``choreo.dlq.`` in the letter's subject,
which the broker enforces (each service's user may publish only under
``choreo.dlq.<service>.>``, see ``choreo.permissions``), and the original subject is the rest
of that subject. A letter's other claims are checked (:func:`check_letter`): the service reacts
to that event type (from the choreography; a service the choreography does not know must have a
durable on the stream that receives the subject), and the event at the recorded stream and
sequence is the one the letter names (subject, event id, type, body). A letter whose claims do
not check out is *suspect*: listed as such, and never replayed. Replay republishes the event
read back from its source stream, never the body a letter carries, and is refused once that
event has aged out of its stream: services' inbox rows last as long as the stream keeps the
event (``max_age``), so after that a replay could be applied twice.

Parked outbox rows: an event the relay can never publish (larger than the server's
``max_payload`` with its headers, or refused for a reason that will not change) would block
nothing but itself, yet retrying it forever is noise and, before it was set aside, could wedge
the relay. The relay moves it from ``choreo_outbox`` to ``choreo_outbox_parked`` in the
service's own database (the body may be too big for the broker, so it cannot live in the DLQ
stream) and files a small *notice* in the DLQ stream: no body, the reason, the service, the
event id and the subject. ``choreo dlq list`` shows the notice like any dead letter;
``choreo dlq parked`` lists the rows in a service's database and ``choreo dlq unpark`` puts one
back in the outbox (e.g. after raising ``max_payload``).

Resolutions: a dead letter is *open* until an operator replays or discards it. The letter itself
is never changed (stream messages are immutable, and the record of what went wrong must stay);
its resolution (replayed or discarded, by whom, when, with a note) is a JSON value under the
letter's sequence in the JetStream key-value bucket ``CHOREO_DLQ_RESOLUTIONS``. The bucket's
``create`` succeeds once per key, so two operators (or the CLI and the web console) cannot both
resolve the same letter: the second one is told it is already resolved.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import getpass
import json
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError, NotFoundError

from choreo import contracts, subjects
from choreo.envelope import H_CORRELATION_ID, H_ID, H_MSG_ID, H_TYPE
from choreo.store.port import Database, Transaction
from choreo.streamread import drain, open_reader, read_stream

H_REASON = "choreo-dlq-reason"
H_DETAIL = "choreo-dlq-detail"
H_SERVICE = "choreo-dlq-service"
H_SUBJECT = "choreo-dlq-subject"
H_STREAM = "choreo-dlq-stream"
H_STREAM_SEQ = "choreo-dlq-stream-seq"
H_DELIVERIES = "choreo-dlq-deliveries"
H_TIME = "choreo-dlq-time"
H_REPLAY_OF = "choreo-replay-of"
# Operators must act on this letter: nothing compensated the step that gave up (no failure
# event exists for it) or a held event never got its predecessor.
H_ALARM = "choreo-dlq-alarm"
# The step gave up and its give-up handler compensated: the saga went on; kept for the record.
H_COMPENSATED = "choreo-dlq-compensated"
H_PARKED = "choreo-dlq-parked"  # on a notice: where the row is ("outbox": choreo_outbox_parked)

# Reasons, as they appear in the dead-letter headers.
UNDECODABLE = "undecodable_body"
UNKNOWN_TYPE = "unknown_event_type"
UNSUPPORTED_VERSION = "unsupported_schema_version"
MISSING_HEADERS = "missing_headers"
CHAIN_TOO_DEEP = "chain_depth_exceeded"
RETRIES_EXHAUSTED = "retries_exhausted"
REJECTED = "handler_rejected"
GAP_NOT_FILLED = "gap_not_filled"
# Delivered more often than the runtime allows without ever reporting an outcome: earlier
# deliveries crashed or hung the process, so the handler is not run again.
DELIVERY_LIMIT = "delivery_limit_exceeded"
# Outbox rows the relay parked instead of publishing.
TOO_LARGE = "outbox_row_too_large"
REFUSED = "outbox_row_refused"


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    service: str
    reason: str
    detail: str
    subject: str
    headers: dict[str, str]
    body: bytes
    deliveries: int
    dead_lettered_at: float
    resolution: Resolution | None = None  # None: open, an operator has not acted on it yet
    # Why the letter's claims do not check out (empty: they do, or were not checked). The
    # service and the subject come from the letter's own subject, never from its headers.
    suspicions: tuple[str, ...] = ()
    # Why its source event can no longer be replayed (aged out of its stream), or "".
    source_gone: str = ""

    @property
    def suspect(self) -> bool:
        return bool(self.suspicions)

    @property
    def is_open(self) -> bool:
        return self.resolution is None

    @property
    def event_type(self) -> str:
        """The original event's full type name: from its subject (which the consumer's filter
        matched), else from its header."""
        from_subject = subjects.event_type_of_subject(self.subject)
        try:
            subjects.parse_event_name(from_subject)
        except ValueError:
            return self.headers.get(H_TYPE) or from_subject
        return from_subject

    @property
    def correlation_id(self) -> str:
        return self.headers.get(H_CORRELATION_ID, "")

    @property
    def alarm(self) -> bool:
        return self.headers.get(H_ALARM) == "true"

    @property
    def compensated(self) -> bool:
        return self.headers.get(H_COMPENSATED) == "true"

    @property
    def original_headers(self) -> dict[str, str]:
        return {k: v for k, v in self.headers.items() if not k.startswith("choreo-dlq-")}

    @property
    def is_parked_notice(self) -> bool:
        """A notice of a parked outbox row: the event itself is in the service's database."""
        return H_PARKED in self.headers


async def dead_letter(
    js: Any,
    *,
    service: str,
    subject: str,
    headers: Mapping[str, str] | None,
    body: bytes,
    reason: str,
    detail: str,
    stream: str,
    stream_seq: int,
    deliveries: int,
    alarm: bool = False,
    compensated: bool = False,
) -> None:
    letter_headers = dict(headers or {})
    letter_headers.update(
        {
            H_MSG_ID: f"dlq:{service}:{stream}:{stream_seq}",
            H_REASON: reason,
            H_DETAIL: detail[:1000],
            H_SERVICE: service,
            H_SUBJECT: subject,
            H_STREAM: stream,
            H_STREAM_SEQ: str(stream_seq),
            H_DELIVERIES: str(deliveries),
            H_TIME: f"{time.time():.6f}",
        }
    )
    if alarm:
        letter_headers[H_ALARM] = "true"
    if compensated:
        letter_headers[H_COMPENSATED] = "true"
    await js.publish(subjects.dlq_subject(service, subject), body, headers=letter_headers)


def _number(text: str | None, kind: type[int] | type[float]) -> Any:
    try:
        return kind(text or 0)
    except ValueError:
        return kind(0)


def _letter(
    seq: int, headers: Mapping[str, str] | None, body: bytes | None, dlq_subject: str = ""
) -> DeadLetter:
    """A letter as filed. Its service and original subject are read from ``dlq_subject`` (the
    broker only lets a service publish under its own); headers that disagree make it suspect."""
    headers = dict(headers or {})
    service, subject = subjects.parse_dlq_subject(dlq_subject)
    claimed_service = headers.get(H_SERVICE, "")
    claimed_subject = headers.get(H_SUBJECT, "")
    suspicions = []
    if not service:
        suspicions.append(f"its subject {dlq_subject!r} names no service")
    elif claimed_service and claimed_service != service:
        suspicions.append(
            f"filed under {service}'s dead-letter subject, but its header claims the service"
            f" {claimed_service!r}"
        )
    if H_PARKED in headers:
        # A notice: the subject carries the original subject only when it is a plain one.
        subject = claimed_subject
    elif claimed_subject and claimed_subject != subject:
        suspicions.append(
            f"its header names the subject {claimed_subject!r}, its dead-letter subject {subject!r}"
        )
    return DeadLetter(
        seq=seq,
        service=service,
        reason=headers.get(H_REASON, ""),
        detail=headers.get(H_DETAIL, ""),
        subject=subject,
        headers=headers,
        body=body or b"",
        deliveries=_number(headers.get(H_DELIVERIES), int),
        dead_lettered_at=_number(headers.get(H_TIME), float),
        suspicions=tuple(suspicions),
    )


async def get_dead_letter(js: Any, seq: int, *, check: bool = True) -> DeadLetter:
    """One dead letter with its resolution and, unless ``check`` is False, what in it does not
    check out (:func:`check_letter`); ``NotFoundError`` if there is no such sequence."""
    raw = await js.get_msg(subjects.DLQ_STREAM, seq)
    letter = _letter(seq, raw.headers, raw.data, raw.subject or "")
    letter = dataclasses.replace(letter, resolution=await resolution_of(js, seq))
    if check:
        letter, _ = await check_letter(js, letter)
    return letter


async def list_dead_letters(
    js: Any, service: str | None = None, *, check: bool = True
) -> list[DeadLetter]:
    """Every dead letter still in the stream, resolved or not, oldest first (optionally of one
    service), each checked unless ``check`` is False. ``NotFoundError`` if no letter was ever
    filed (the stream does not exist)."""
    return await find_dead_letters(
        js, LetterFilter(service=service), include_resolved=True, check=check
    )


# --- checking a letter's claims -------------------------------------------------------------

# A replay must reach the services before their inbox rows of the event are pruned (they live
# ``max_age`` after it was handled): the source must have this much of its retention left.
_REPLAY_MARGIN_FRACTION = 0.1
_REPLAY_MARGIN_MAX_S = 3600.0
_CHECK_CONCURRENCY = 32


@dataclass
class _Checker:
    """Checks letters against the broker, with what it read cached for one listing."""

    js: Any
    _streams: dict[str, Any] = dataclasses.field(default_factory=dict)
    _durables: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    _dlq_flaw: str | None = None

    async def stream(self, name: str) -> Any:
        """The stream's info, or None when it does not exist."""
        if name not in self._streams:
            try:
                self._streams[name] = await self.js.stream_info(name)
            except NotFoundError:
                self._streams[name] = None
        return self._streams[name]

    async def durables(self, stream: str) -> list[Any]:
        if stream not in self._durables:
            found: list[Any] = []
            while True:
                page = await self.js.consumers_info(stream, offset=len(found) or None)
                found += page
                if not page or len(page) < 256:
                    break
            self._durables[stream] = found
        return self._durables[stream]

    async def reacts(self, service: str, event_type: str, subject: str, stream: str) -> bool:
        """Whether ``service`` receives ``subject``: by the choreography for a service it
        knows; else by a durable of the service (``<service>__...``) on the stream whose filter
        takes it (a service's user may create only its own durables, by name)."""
        triggers = {e.trigger for e in contracts.choreography() if e.service == service}
        if triggers:
            return event_type in triggers
        for consumer in await self.durables(stream):
            config = consumer.config
            name = config.durable_name or config.name or ""
            filters = config.filter_subjects or [config.filter_subject or ">"]
            if name.startswith(f"{service}__") and any(
                subjects.subject_matches(f, subject) for f in filters
            ):
                return True
        return False

    async def dlq_stream_flaw(self) -> str:
        """Why a letter's subject in the dead-letter stream may not be the subject it was
        published on ("" when it is). A service's user may create that stream when it is
        absent; made with a subject transform, sources or a mirror, it could store a letter of
        one service under another's subject."""
        if self._dlq_flaw is None:
            info = await self.stream(subjects.DLQ_STREAM)
            config = info.config if info is not None else None
            flaws = []
            if config is not None:
                if list(config.subjects or []) != [f"{subjects.DLQ_PREFIX}.>"]:
                    flaws.append(f"takes the subjects {config.subjects}")
                if config.subject_transform is not None:
                    flaws.append("rewrites subjects (a subject transform)")
                if config.sources or config.mirror:
                    flaws.append("copies messages from other streams")
            self._dlq_flaw = (
                f"the dead-letter stream {subjects.DLQ_STREAM} {' and '.join(flaws)}, so a"
                " letter's subject does not prove who filed it"
                if flaws
                else ""
            )
        return self._dlq_flaw

    async def check(self, letter: DeadLetter) -> tuple[DeadLetter, Any]:
        suspicions = list(letter.suspicions)
        flaw = await self.dlq_stream_flaw()
        if flaw:
            suspicions.append(flaw)
        gone = ""
        source = None
        if not letter.is_parked_notice and letter.service:
            found, gone, source = await self._check_source(letter)
            suspicions += found
        letter = dataclasses.replace(letter, suspicions=tuple(suspicions), source_gone=gone)
        return letter, source

    async def _check_source(self, letter: DeadLetter) -> tuple[list[str], str, Any]:
        """(suspicions, why the source is gone, the source message)."""
        try:
            event_type = subjects.event_type_of_subject(letter.subject)
            stream = subjects.stream_name(subjects.context_of(event_type))
        except ValueError:
            return [f"its subject {letter.subject!r} is no event's"], "", None
        found = []
        if not await self.reacts(letter.service, event_type, letter.subject, stream):
            found.append(f"{letter.service} does not subscribe to {event_type}")
        claimed_stream = letter.headers.get(H_STREAM, "")
        seq = _number(letter.headers.get(H_STREAM_SEQ), int)
        if claimed_stream != stream:
            found.append(f"it names the stream {claimed_stream!r}; {letter.subject} is in {stream}")
        if seq < 1:
            found.append("it names no stream sequence of its event")
        if found:
            return found, "", None
        info = await self.stream(stream)
        if info is None:
            return found, f"the stream {stream} of its source event does not exist", None
        if seq > (info.state.last_seq or 0):
            return [f"it names {stream} #{seq}, a sequence that stream never reached"], "", None
        max_age = float(info.config.max_age or 0)
        retention = (
            f"services forget a handled event's id (their inbox rows) after the stream's"
            f" max_age of {max_age:.0f}s, so a replay could be applied twice"
            if max_age
            else "a replay could be applied twice"
        )
        try:
            source = await self.js.get_msg(stream, seq)
        except NotFoundError:
            return (
                found,
                f"its source event {stream} #{seq} is gone from its stream (aged out or"
                f" removed); {retention}",
                None,
            )
        headers = dict(source.headers or {})
        if source.subject != letter.subject:
            found.append(f"{stream} #{seq} is {source.subject}, not {letter.subject}")
        for name, what in ((H_ID, "event id"), (H_TYPE, "type")):
            if headers.get(name, "") != letter.headers.get(name, ""):
                found.append(
                    f"its {what} {letter.headers.get(name, '')!r} is not the source event's"
                    f" ({stream} #{seq}: {headers.get(name, '')!r})"
                )
        if (source.data or b"") != letter.body:
            found.append(f"its body is not the body of its source event {stream} #{seq}")
        if found:
            return found, "", None
        if max_age and source.time is not None:
            age = time.time() - source.time.timestamp()
            margin = min(_REPLAY_MARGIN_FRACTION * max_age, _REPLAY_MARGIN_MAX_S)
            if age > max_age - margin:
                return (
                    found,
                    f"its source event {stream} #{seq} is {age:.0f}s old, about to age out of"
                    f" its stream; {retention}",
                    None,
                )
        return found, "", source


async def check_letter(js: Any, letter: DeadLetter) -> tuple[DeadLetter, Any]:
    """The letter with its suspicions and whether its source is gone, and the source event as
    stored (``RawStreamMsg``; None when the letter is suspect, a notice, or its source is gone).

    Suspect: its service (from its subject) does not receive its event, or the event at the
    stream and sequence it names is not the one it names (subject, id, type, body)."""
    return await _Checker(js).check(letter)


async def _check_all(js: Any, letters: list[DeadLetter]) -> list[DeadLetter]:
    checker = _Checker(js)
    checked: list[DeadLetter] = []
    for start in range(0, len(letters), _CHECK_CONCURRENCY):
        chunk = letters[start : start + _CHECK_CONCURRENCY]
        done = await asyncio.gather(*(checker.check(letter) for letter in chunk))
        checked += [letter for letter, _ in done]
    return checked


# --- finding letters ----------------------------------------------------------------------


@dataclass(frozen=True)
class LetterFilter:
    """What an operator narrows a listing or a bulk replay to. Empty fields match anything."""

    service: str | None = None
    event: str | None = None  # full type name or its last part: OrderCreated
    reason: str | None = None
    order_id: str | None = None  # the saga's correlation id
    since: float | None = None  # filed at or after this Unix time

    def subjects(self) -> list[str]:
        """Subject filters for the read, so the broker sends only what may match."""
        service = subjects.subject_token(self.service) if self.service else "*"
        if self.order_id:
            # Every context the contracts know, whatever its namespace (acme.loyalty too).
            return subjects.dlq_saga_filters(contracts.contexts(), self.order_id, service)
        return [f"{subjects.DLQ_PREFIX}.{service}.>"]

    def matches(self, letter: DeadLetter) -> bool:
        if self.service and letter.service != self.service:
            return False
        if self.reason and letter.reason != self.reason:
            return False
        if self.event and self.event.lower() not in (
            letter.event_type.lower(),
            letter.event_type.rsplit(".", 1)[-1].lower(),
        ):
            return False
        if self.order_id and letter.correlation_id != self.order_id:
            return False
        return self.since is None or letter.dead_lettered_at >= self.since


_LOOK_UP_ONE_BY_ONE = 20


async def find_dead_letters(
    js: Any,
    where: LetterFilter | None = None,
    *,
    include_resolved: bool = False,
    check: bool = True,
) -> list[DeadLetter]:
    """Dead letters matching ``where``, oldest first, each with its resolution and (unless
    ``check`` is False) checked against its source (:func:`check_letter`); only the open ones
    unless ``include_resolved``. One filtered read of the stream, one of the bucket."""
    where = where or LetterFilter()
    name, wanted = await open_reader(js, subjects.DLQ_STREAM, where.subjects())
    messages = await drain(js, subjects.DLQ_STREAM, name, wanted)
    if len(messages) <= _LOOK_UP_ONE_BY_ONE:
        # A few letters (one saga's): a key look-up each, not a read of every resolution.
        resolved = {
            m.seq: found for m in messages if (found := await resolution_of(js, m.seq)) is not None
        }
    else:
        resolved = await resolutions(js)
    letters = []
    for message in messages:
        letter = _letter(message.seq, message.headers, message.data, message.subject)
        letter = dataclasses.replace(letter, resolution=resolved.get(message.seq))
        if where.matches(letter) and (include_resolved or letter.is_open):
            letters.append(letter)
    return await _check_all(js, letters) if check else letters


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """``30m``, ``2h``, ``7d`` ago, or an ISO 8601 time (UTC unless it says otherwise)."""
    now = time.time() if now is None else now
    match = _DURATION.match(text.strip())
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give a duration such as 30m, 2h or 7d, or a time such as"
            " 2026-01-31T14:00"
        ) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def decode_payload(event_type: str, body: bytes) -> dict[str, Any]:
    """The body as JSON (Protobuf field names); ``ValueError`` saying why when it cannot be."""
    cls = contracts.event_classes().get(event_type)
    if cls is None:
        raise ValueError(f"no Protobuf class for event type {event_type!r}")
    message = cls()
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise ValueError(f"not a valid {event_type}: {exc}") from None
    return MessageToDict(message, preserving_proto_field_name=True)


def letter_json(letter: DeadLetter, *, full: bool = False) -> dict[str, Any]:
    """A letter as JSON; ``full`` adds its headers and its decoded (or base64) body."""
    out: dict[str, Any] = {
        "seq": letter.seq,
        "service": letter.service,
        "reason": letter.reason,
        "detail": letter.detail,
        "subject": letter.subject,
        "event_type": letter.event_type,
        "order_id": letter.correlation_id,
        "deliveries": letter.deliveries,
        "dead_lettered_at": letter.dead_lettered_at,
        "alarm": letter.alarm,
        "compensated": letter.compensated,
        "parked_notice": letter.is_parked_notice,
        "suspect": letter.suspect,
        "suspicions": list(letter.suspicions),
        "source_gone": letter.source_gone or None,
        "status": "open" if letter.resolution is None else letter.resolution.action,
        "resolution": None if letter.resolution is None else letter.resolution.to_json(),
    }
    if full:
        out["headers"] = letter.headers
        try:
            out["payload"] = decode_payload(letter.event_type, letter.body)
        except ValueError as exc:
            out["payload"] = None
            out["payload_error"] = str(exc)
        out["body_base64"] = base64.b64encode(letter.body).decode()
    return out


# --- resolutions ----------------------------------------------------------------------------

RESOLUTIONS_BUCKET = "CHOREO_DLQ_RESOLUTIONS"
REPLAYED = "replayed"
DISCARDED = "discarded"


@dataclass(frozen=True)
class Resolution:
    """What an operator did with a dead letter."""

    seq: int
    action: str  # REPLAYED or DISCARDED
    by: str
    at: float
    note: str = ""
    replay_msg_id: str = ""  # the Nats-Msg-Id the replayed event was published with

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: bytes) -> Resolution:
        fields = json.loads(raw)
        return cls(**{f.name: fields[f.name] for f in dataclasses.fields(cls) if f.name in fields})

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        note = f": {self.note}" if self.note else ""
        return f"{self.action} by {self.by} at {when}{note}"


class ReplayRefused(Exception):
    """A letter that cannot be replayed: already resolved, or a notice without a body."""


class SuspectLetter(ReplayRefused):
    """The letter's claims do not check out (:func:`check_letter`): it is not replayed."""


class SourceGone(ReplayRefused):
    """The letter's source event is no longer in its stream: a replay could apply it twice."""


class AlreadyResolved(ReplayRefused):
    """The letter was replayed or discarded before; it is not open any more."""

    def __init__(self, resolution: Resolution) -> None:
        super().__init__(
            f"dead letter {resolution.seq} is already {resolution.describe()}"
            " (see `choreo dlq show` / `choreo dlq list --all`)"
        )
        self.resolution = resolution


def default_actor() -> str:
    """Who is acting: env CHOREO_OPERATOR, else user@host."""
    named = os.environ.get("CHOREO_OPERATOR")
    if named:
        return named
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


async def resolutions(js: Any) -> dict[int, Resolution]:
    """Every recorded resolution by dead-letter sequence (one read of the bucket's stream)."""
    try:
        messages = await read_stream(js, f"KV_{RESOLUTIONS_BUCKET}")
    except NotFoundError:
        return {}  # nothing was ever resolved
    found: dict[int, Resolution] = {}
    for message in messages:
        if message.data:
            resolution = Resolution.from_json(message.data)
            found[resolution.seq] = resolution
    return found


async def resolution_of(js: Any, seq: int) -> Resolution | None:
    try:
        bucket = await js.key_value(RESOLUTIONS_BUCKET)
    except BucketNotFoundError:
        return None
    try:
        entry = await bucket.get(str(seq))
    except NotFoundError:  # KeyNotFoundError: open
        return None
    return Resolution.from_json(entry.value) if entry.value else None


async def _record(js: Any, resolution: Resolution) -> None:
    bucket = await js.create_key_value(bucket=RESOLUTIONS_BUCKET, history=1)
    try:
        await bucket.create(str(resolution.seq), json.dumps(resolution.to_json()).encode())
    except KeyWrongLastSequenceError:
        recorded = await resolution_of(js, resolution.seq)
        raise AlreadyResolved(recorded or resolution) from None


async def discard(js: Any, seq: int, *, note: str, by: str | None = None) -> Resolution:
    """Close a letter without replaying it. ``NotFoundError`` for an unknown sequence,
    :class:`AlreadyResolved` for a closed one."""
    letter = await get_dead_letter(js, seq)
    if letter.resolution is not None:
        raise AlreadyResolved(letter.resolution)
    resolution = Resolution(seq, DISCARDED, by or default_actor(), time.time(), note)
    await _record(js, resolution)
    return resolution


async def replay(js: Any, seq: int) -> str:
    """Publish a dead letter again on its original subject and record it as replayed; returns
    the new ``Nats-Msg-Id``. See :func:`replay_letter`."""
    return await replay_letter(js, seq)


async def replay_letter(js: Any, seq: int, *, by: str | None = None, note: str = "") -> str:
    """Publish a dead letter's event again on its original subject; returns the new
    ``Nats-Msg-Id``.

    What is published is the original event, read back from its source stream at the sequence
    the letter records, never the body or headers the letter carries; a letter whose claims do
    not check out is refused (:class:`SuspectLetter`), and so is one whose source event has
    aged out of its stream (:class:`SourceGone`): services no longer hold its id in their inbox.

    The id is derived (``<event id>:replay:<dlq seq>``) so the broker does not drop it as a
    duplicate of the original, while replaying the same letter twice is still deduplicated.
    The event id inside (``ce-id``) is unchanged: subscribers that handled the original event
    already find it in their inbox and skip it.

    The letter is then recorded as replayed. Publish first, record second: a crash between the
    two leaves the letter open, and replaying it again is harmless (same ``Nats-Msg-Id``, same
    ``ce-id``), while the other order could mark a letter replayed that never was.
    ``NotFoundError`` for an unknown sequence, :class:`AlreadyResolved` for a closed one,
    :class:`ParkedRowNotice` for a notice (it has no body to publish).
    """
    letter = await get_dead_letter(js, seq, check=False)
    if letter.resolution is not None:
        raise AlreadyResolved(letter.resolution)
    if letter.is_parked_notice:
        event_id = letter.headers.get(H_ID, "?")
        raise ParkedRowNotice(
            f"dead letter {seq} is a notice: event {event_id} of {letter.service} never left"
            f" its outbox ({letter.reason}: {letter.detail}); it is parked in that service's"
            f" database. Fix the cause, then `choreo dlq unpark {event_id} --database-url URL`"
        )
    letter, source = await check_letter(js, letter)
    if letter.suspect:
        raise SuspectLetter(
            f"dead letter {seq} is suspect and is not replayed: {'; '.join(letter.suspicions)}."
            f" Discard it (`choreo dlq discard {seq} --reason ...`) and find out who filed it"
        )
    if source is None:
        raise SourceGone(
            f"dead letter {seq} is not replayed: {letter.source_gone or 'its source is gone'}."
            f" Repair its saga by hand, then discard it (`choreo dlq discard {seq} --reason ...`)"
        )
    headers = dict(source.headers or {})
    original_id = headers.get(H_ID) or headers.get(H_MSG_ID) or f"dlq-{seq}"
    headers[H_MSG_ID] = f"{original_id}:replay:{seq}"
    headers[H_REPLAY_OF] = str(seq)
    await js.publish(source.subject, source.data or b"", headers=headers)
    msg_id = headers[H_MSG_ID]
    actor = by or default_actor()
    await _record(js, Resolution(seq, REPLAYED, actor, time.time(), note, replay_msg_id=msg_id))
    return msg_id


class ParkedRowNotice(ReplayRefused):
    """``replay`` was asked for a notice, which has no body to publish."""


@dataclass(frozen=True)
class ParkedRow:
    """An outbox row the relay set aside, with why."""

    seq: int
    event_id: str
    subject: str
    headers: dict[str, str]
    body: bytes
    created_at: float
    parked_at: float
    service: str
    reason: str
    detail: str
    notice_filed: bool


# Copy the row and delete it in one transaction. ON CONFLICT: another replica parked it first.
_PARK_SQL = (
    "INSERT INTO choreo_outbox_parked (event_id, subject, headers, body, created_at, parked_at,"
    " service, reason, detail, notice_filed)"
    " SELECT event_id, subject, headers, body, created_at, ?, ?, ?, ?, 0"
    " FROM choreo_outbox WHERE event_id = ? ON CONFLICT (event_id) DO NOTHING"
)


async def park(tx: Transaction, *, event_id: str, service: str, reason: str, detail: str) -> bool:
    """Move one row from ``choreo_outbox`` to ``choreo_outbox_parked``; False if it was gone."""
    await tx.execute(_PARK_SQL, (time.time(), service, reason, detail[:1000], event_id))
    return await tx.execute("DELETE FROM choreo_outbox WHERE event_id = ?", (event_id,)) > 0


_PARKED_COLUMNS = (
    "seq, event_id, subject, headers, body, created_at, parked_at, service, reason, detail,"
    " notice_filed"
)


def _parked(row: tuple[Any, ...]) -> ParkedRow:
    seq, event_id, subject, headers, body, created, parked, service, reason, detail, filed = row
    return ParkedRow(
        seq=int(seq),
        event_id=event_id,
        subject=subject,
        headers=json.loads(headers),
        body=bytes(body),
        created_at=float(created),
        parked_at=float(parked),
        service=service,
        reason=reason,
        detail=detail,
        notice_filed=bool(filed),
    )


async def list_parked(db: Database, *, unnoticed_only: bool = False) -> list[ParkedRow]:
    """Parked outbox rows, oldest first (only those whose DLQ notice is not filed yet)."""
    where = " WHERE notice_filed = 0" if unnoticed_only else ""
    async with db.read() as tx:
        rows = await tx.fetchall(
            f"SELECT {_PARKED_COLUMNS} FROM choreo_outbox_parked{where} ORDER BY seq"
        )
    return [_parked(row) for row in rows]


async def unpark(db: Database, event_id: str) -> bool:
    """Put a parked row back at the end of the outbox; the relay's next sweep sends it (or
    parks it again if the cause is still there). False if no such parked row."""
    async with db.transaction() as tx:
        moved = await tx.execute(
            "INSERT INTO choreo_outbox (event_id, subject, headers, body, created_at)"
            " SELECT event_id, subject, headers, body, 0 FROM choreo_outbox_parked"
            " WHERE event_id = ? ON CONFLICT (event_id) DO NOTHING",
            (event_id,),
        )
        await tx.execute("DELETE FROM choreo_outbox_parked WHERE event_id = ?", (event_id,))
    return moved > 0


_TOKEN = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


async def file_parked_notice(js: Any, row: ParkedRow, timeout_s: float = 5.0) -> None:
    """File the small DLQ notice of a parked row (idempotent: derived ``Nats-Msg-Id``)."""
    # The original subject goes into the notice's subject only if it is a plain one: it may
    # be the very reason the row was refused.
    tail = row.subject if _TOKEN.match(row.subject) and len(row.subject) < 200 else "invalid"
    headers = {
        H_MSG_ID: f"dlq:parked:{row.service}:{row.event_id}",
        H_ID: row.event_id,
        H_PARKED: "outbox",
        H_REASON: row.reason,
        H_DETAIL: row.detail[:1000],
        H_SERVICE: row.service,
        H_SUBJECT: row.subject[:200],
        H_STREAM: "",
        H_STREAM_SEQ: "0",
        H_DELIVERIES: "0",
        H_TIME: f"{row.parked_at:.6f}",
    }
    await js.publish(
        subjects.dlq_subject(row.service, tail), b"", headers=headers, timeout=timeout_s
    )


async def mark_notice_filed(db: Database, event_id: str) -> None:
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE choreo_outbox_parked SET notice_filed = 1 WHERE event_id = ?", (event_id,)
        )
