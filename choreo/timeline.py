"""Rebuild one saga from the streams by its correlation id, as a text timeline or Mermaid.

Operators ask "what happened to order X?": every event of a saga carries the same correlation
id and names its cause, so the streams alone tell the story, in order, across services. Each
step carries its decoded payload; a step's *hop* is the time from the event that caused it
(its ``ce-causationid``) to it: how long the consuming service took to react, queueing
included. Failure reasons come from the events' own ``reason``/``detail`` fields
(``PaymentFailed``, ``OrderCancelled``, ...) and from the saga's dead letters.

The look-up stays a filtered read: the correlation id is the last token of every event's and
every dead letter's subject, so only this saga's messages are read, however full the streams.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nats.js.errors import NotFoundError

from choreo import contracts, dlq, subjects
from choreo.envelope import H_CAUSATION_ID, H_CORRELATION_ID, H_ID, H_SOURCE, H_TIME, H_TYPE
from choreo.streamread import read_stream


@dataclass(frozen=True)
class Step:
    at: datetime
    source: str
    event_type: str  # the short name: OrderCreated
    event_id: str
    causation_id: str
    full_type: str = ""  # shop.order.v1.OrderCreated
    payload: dict[str, Any] | None = None  # None: not decodable (see payload_error)
    payload_error: str = ""
    stream: str = ""
    seq: int = 0

    @property
    def failure(self) -> str:
        """Why this step is a failure, from the event's ``reason``/``detail`` fields; ""."""
        if not self.payload:
            return ""
        reason = str(self.payload.get("reason", ""))
        detail = str(self.payload.get("detail", ""))
        return f"{reason}: {detail}" if reason and detail else reason or detail


@dataclass(frozen=True)
class Saga:
    correlation_id: str
    steps: list[Step]
    dead_letters: list[dlq.DeadLetter] = field(default_factory=list)

    def hop_ms(self, step: Step) -> float | None:
        """Milliseconds from the event that caused ``step``; None for the first (a command)."""
        cause = {s.event_id: s for s in self.steps}.get(step.causation_id)
        return None if cause is None else (step.at - cause.at).total_seconds() * 1000

    @property
    def failures(self) -> list[str]:
        found = [f"{step.event_type}: {step.failure}" for step in self.steps if step.failure]
        for letter in self.dead_letters:
            status = "open" if letter.resolution is None else letter.resolution.describe()
            found.append(
                f"dead letter {letter.seq} ({letter.service} gave up on"
                f" {letter.event_type.rsplit('.', 1)[-1]}, {letter.reason}, {status}):"
                f" {letter.detail}"
            )
        return found


async def saga_steps(js: Any, correlation_id: str) -> list[Step]:
    steps: dict[str, Step] = {}
    for context in contracts.contexts():
        stream = subjects.stream_name(context)
        # The correlation id is the subject's last token: read only this saga's messages.
        for message in await read_stream(js, stream, subjects.saga_filter(context, correlation_id)):
            headers = message.headers
            if headers.get(H_CORRELATION_ID) != correlation_id or headers.get(H_ID) in steps:
                continue
            full_type = headers.get(H_TYPE, "?")
            payload, error = None, ""
            try:
                payload = dlq.decode_payload(full_type, message.data)
            except ValueError as exc:
                error = str(exc)
            steps[headers[H_ID]] = Step(
                at=datetime.fromisoformat(headers[H_TIME].replace("Z", "+00:00")),
                source=headers.get(H_SOURCE, "?"),
                event_type=full_type.rsplit(".", 1)[-1],
                event_id=headers[H_ID],
                causation_id=headers.get(H_CAUSATION_ID, ""),
                full_type=full_type,
                payload=payload,
                payload_error=error,
                stream=stream,
                seq=message.seq,
            )
    return sorted(steps.values(), key=lambda step: step.at)


async def saga_dead_letters(js: Any, correlation_id: str) -> list[dlq.DeadLetter]:
    """The saga's dead letters, resolved ones included (a filtered read too)."""
    try:
        return await dlq.find_dead_letters(
            js, dlq.LetterFilter(order_id=correlation_id), include_resolved=True
        )
    except NotFoundError:
        return []  # no dead-letter stream: nothing was ever dead-lettered


async def saga(js: Any, correlation_id: str) -> Saga:
    return Saga(
        correlation_id,
        await saga_steps(js, correlation_id),
        await saga_dead_letters(js, correlation_id),
    )


def render_text(
    steps: list[Step], *, payloads: bool = False, dead_letters: list[dlq.DeadLetter] | None = None
) -> str:
    """One line per event: offset from the start, hop from its cause, who, what, caused by."""
    if not steps and not dead_letters:
        return "(no events)"
    view = Saga("", steps, dead_letters or [])
    lines = []
    if steps:
        start = steps[0].at
        names = {step.event_id: step.event_type for step in steps}
        lines.append(f"  {'offset':>11}  {'hop':>10}  {'service':<13} {'event':<27} caused by")
        for step in steps:
            offset_ms = (step.at - start).total_seconds() * 1000
            hop = view.hop_ms(step)
            hop_text = "" if hop is None else f"{hop:.1f} ms"
            cause = names.get(step.causation_id, "command")
            lines.append(
                f"  +{offset_ms:8.1f} ms  {hop_text:>10}  {step.source:<13}"
                f" {step.event_type:<27} <- {cause}"
            )
            if step.failure:
                lines.append(f"{'':>17}failure: {step.failure}")
            if payloads:
                body = json.dumps(step.payload, indent=2) if step.payload is not None else None
                text = body if body is not None else f"(not decodable: {step.payload_error})"
                lines.extend(f"{'':>17}{line}" for line in text.splitlines())
    else:
        lines.append("(no events)")
    failures = view.failures
    if failures:
        lines.append("failures:")
        lines.extend(f"  {failure}" for failure in failures)
    return "\n".join(lines)


def saga_json(view: Saga) -> dict[str, Any]:
    start = view.steps[0].at if view.steps else None
    return {
        "correlation_id": view.correlation_id,
        "steps": [
            {
                "at": step.at.isoformat(),
                "offset_ms": (step.at - start).total_seconds() * 1000 if start else 0.0,
                "hop_ms": view.hop_ms(step),
                "source": step.source,
                "event_type": step.full_type or step.event_type,
                "event_id": step.event_id,
                "causation_id": step.causation_id,
                "failure": step.failure or None,
                "payload": step.payload,
                "stream": step.stream,
                "seq": step.seq,
            }
            for step in view.steps
        ],
        "dead_letters": [dlq.letter_json(letter) for letter in view.dead_letters],
        "failures": view.failures,
    }


def render_mermaid(steps: list[Step]) -> str:
    """A sequence diagram: each event drawn from its source service to the next one."""
    by_id = {step.event_id: step for step in steps}
    lines = ["sequenceDiagram"]
    for step in steps:
        cause = by_id.get(step.causation_id)
        sender = cause.source if cause else "client"
        lines.append(f"    {sender}->>{step.source}: {step.event_type}")
    return "\n".join(lines)


async def saga_timeline(js: Any, correlation_id: str) -> str:
    view = await saga(js, correlation_id)
    return render_text(view.steps, dead_letters=view.dead_letters)
