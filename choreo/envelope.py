"""The envelope: an event's metadata carried in NATS headers around a binary Protobuf body.

Headers follow the CloudEvents NATS protocol binding (binary mode: attributes as ``ce-*``
headers, ``content-type`` for the data content type), so standard tooling can read them.
choreo's own attributes are CloudEvents extensions (lower-case alphanumeric names).
``Nats-Msg-Id`` carries the event id so the broker drops a re-send inside the stream's
``duplicate_window``; W3C ``traceparent``/``tracestate`` carry the trace.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import DecodeError, Message

from choreo import subjects
from choreo.errors import PoisonMessage

CONTENT_TYPE = "application/protobuf"

H_MSG_ID = "Nats-Msg-Id"
H_SPECVERSION = "ce-specversion"
H_ID = "ce-id"
H_TYPE = "ce-type"
H_SOURCE = "ce-source"
H_TIME = "ce-time"
H_SUBJECT = "ce-subject"  # the aggregate id: what the event is about
H_DATASCHEMA = "ce-dataschema"
H_CONTENT_TYPE = "content-type"
H_SCHEMA_VERSION = "ce-schemaversion"
H_CORRELATION_ID = "ce-correlationid"
H_CAUSATION_ID = "ce-causationid"
H_CHAIN_DEPTH = "ce-chaindepth"
H_AGGREGATE_TYPE = "ce-aggregatetype"
H_AGGREGATE_VERSION = "ce-aggregateversion"
H_TRACEPARENT = "traceparent"
H_TRACESTATE = "tracestate"

REQUIRED_HEADERS = (H_ID, H_TYPE, H_SOURCE, H_TIME, H_CORRELATION_ID, H_CHAIN_DEPTH)


def new_event_id() -> str:
    """A random (version 4) UUID as text, the same as ``str(uuid.uuid4())``: 16 random bytes,
    the version and variant bits set, hex in 8-4-4-4-12 groups. Written out because
    ``uuid.UUID``'s constructor and ``__str__`` are Python code that runs once per event."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@dataclass(frozen=True)
class Envelope:
    """Everything about an event except its body."""

    event_id: str
    event_type: str
    source: str
    time: datetime
    correlation_id: str
    causation_id: str
    chain_depth: int
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    traceparent: str | None = None
    tracestate: str | None = None

    @property
    def schema_version(self) -> int:
        return subjects.version_of(self.event_type)

    @property
    def subject(self) -> str:
        return subjects.event_subject(self.event_type, self.correlation_id)

    def to_headers(self) -> dict[str, str]:
        dataschema, schema_version = _type_headers(self.event_type)
        headers = {
            H_MSG_ID: self.event_id,
            H_SPECVERSION: "1.0",
            H_ID: self.event_id,
            H_TYPE: self.event_type,
            H_SOURCE: self.source,
            H_TIME: self.time.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            H_SUBJECT: self.aggregate_id,
            H_DATASCHEMA: dataschema,
            H_CONTENT_TYPE: CONTENT_TYPE,
            H_SCHEMA_VERSION: schema_version,
            H_CORRELATION_ID: self.correlation_id,
            H_CAUSATION_ID: self.causation_id,
            H_CHAIN_DEPTH: str(self.chain_depth),
            H_AGGREGATE_TYPE: self.aggregate_type,
            H_AGGREGATE_VERSION: str(self.aggregate_version),
        }
        if self.traceparent:
            headers[H_TRACEPARENT] = self.traceparent
        if self.tracestate:
            headers[H_TRACESTATE] = self.tracestate
        return headers

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None) -> Envelope:
        """Read an envelope; a missing or malformed attribute is a :class:`PoisonMessage`."""
        headers = headers or {}
        get = headers.get
        if not all(map(get, REQUIRED_HEADERS)):
            missing = [name for name in REQUIRED_HEADERS if not get(name)]
            raise PoisonMessage("missing_headers", f"required headers absent: {missing}")
        try:
            chain_depth = int(headers[H_CHAIN_DEPTH])
            aggregate_version = int(get(H_AGGREGATE_VERSION, "0"))
            time = datetime.fromisoformat(headers[H_TIME].replace("Z", "+00:00"))
        except ValueError as exc:
            raise PoisonMessage("malformed_headers", str(exc)) from None
        return _envelope(
            event_id=headers[H_ID],
            event_type=headers[H_TYPE],
            source=headers[H_SOURCE],
            time=time,
            correlation_id=headers[H_CORRELATION_ID],
            causation_id=headers.get(H_CAUSATION_ID, ""),
            chain_depth=chain_depth,
            aggregate_type=headers.get(H_AGGREGATE_TYPE, ""),
            aggregate_id=headers.get(H_SUBJECT, ""),
            aggregate_version=aggregate_version,
            traceparent=headers.get(H_TRACEPARENT),
            tracestate=headers.get(H_TRACESTATE),
        )

    def caused(
        self,
        event_type: str,
        *,
        source: str,
        aggregate_type: str,
        aggregate_id: str,
        aggregate_version: int,
        traceparent: str | None = None,
    ) -> Envelope:
        """The envelope of an event emitted in reaction to this one: same correlation id,
        this event as its cause, one step deeper in the chain."""
        return _envelope(
            event_id=new_event_id(),
            event_type=event_type,
            source=source,
            time=datetime.now(UTC),
            correlation_id=self.correlation_id,
            causation_id=self.event_id,
            chain_depth=self.chain_depth + 1,
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            aggregate_version=aggregate_version,
            traceparent=traceparent or self.traceparent,
            tracestate=self.tracestate,
        )

    def with_trace(self, traceparent: str | None, tracestate: str | None) -> Envelope:
        return replace(self, traceparent=traceparent, tracestate=tracestate)


def root_envelope(
    event_type: str,
    *,
    source: str,
    correlation_id: str,
    aggregate_type: str,
    aggregate_id: str,
    aggregate_version: int,
    traceparent: str | None = None,
) -> Envelope:
    """The envelope of an event that starts a chain (emitted by a command, not an event)."""
    return _envelope(
        event_id=new_event_id(),
        event_type=event_type,
        source=source,
        time=datetime.now(UTC),
        correlation_id=correlation_id,
        causation_id="",
        chain_depth=0,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        aggregate_version=aggregate_version,
        traceparent=traceparent,
        tracestate=None,
    )


def _envelope(**fields: Any) -> Envelope:
    """``Envelope(**fields)`` without the frozen dataclass's ``__init__``, which sets each of the
    twelve fields through ``object.__setattr__`` (made twice per handled event). Every field
    must be given; the result is the same frozen, comparable envelope."""
    if fields.keys() != _FIELDS:
        raise TypeError(f"envelope fields {sorted(fields)} != {sorted(_FIELDS)}")
    envelope = object.__new__(Envelope)
    envelope.__dict__.update(fields)
    return envelope


_FIELDS = {field.name for field in dataclasses.fields(Envelope)}
# Event type -> its ce-dataschema and ce-schemaversion header values (both follow from the type).
_TYPE_HEADERS: dict[str, tuple[str, str]] = {}


def _type_headers(event_type: str) -> tuple[str, str]:
    found = _TYPE_HEADERS.get(event_type)
    if found is None:
        version = subjects.version_of(event_type)  # raises for a malformed name: not kept
        found = _TYPE_HEADERS[event_type] = (f"proto:{event_type}", str(version))
    return found


Upcaster = Callable[[Message], Message]


class EventRegistry:
    """Event type name -> Protobuf class, plus upcasters from older schema versions.

    A consumer registers the version it handles; an older version that has an upcaster is
    decoded with its own class and converted, so a v2 of an event can coexist with v1.
    """

    def __init__(self) -> None:
        self._classes: dict[str, type[Message]] = {}
        self._upcasters: dict[str, tuple[type[Message], Upcaster]] = {}

    def register(self, cls: type[Message]) -> None:
        self._classes[cls.DESCRIPTOR.full_name] = cls

    def register_upcaster(self, old: type[Message], upcast: Upcaster) -> None:
        self._upcasters[old.DESCRIPTOR.full_name] = (old, upcast)

    def knows(self, event_type: str) -> bool:
        return event_type in self._classes or event_type in self._upcasters

    def decode(self, event_type: str, body: bytes) -> Message:
        """Parse a body; unknown types and undecodable bytes are a :class:`PoisonMessage`."""
        if event_type in self._classes:
            cls, upcast = self._classes[event_type], None
        elif event_type in self._upcasters:
            cls, upcast = self._upcasters[event_type]
        else:
            try:
                subjects.parse_event_name(event_type)
            except ValueError:
                raise PoisonMessage("unknown_event_type", f"{event_type!r}") from None
            known_versions = sorted(
                name for name in self._classes if subjects.same_event_type(name, event_type)
            )
            if known_versions:
                raise PoisonMessage(
                    "unsupported_schema_version",
                    f"{event_type!r}; this consumer reads {known_versions}",
                )
            raise PoisonMessage("unknown_event_type", f"{event_type!r}")
        message = cls()
        try:
            message.ParseFromString(body)
        except DecodeError as exc:
            raise PoisonMessage("undecodable_body", f"{event_type}: {exc}") from None
        return upcast(message) if upcast else message


def decode(
    headers: Mapping[str, str] | None, body: bytes, registry: EventRegistry
) -> tuple[Envelope, Message]:
    envelope = Envelope.from_headers(headers)
    return envelope, registry.decode(envelope.event_type, body)
