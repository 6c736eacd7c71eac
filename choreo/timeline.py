"""Rebuild one saga from the streams by its correlation id, as a text timeline or Mermaid.

Operators ask "what happened to order X?": every event of a saga carries the same correlation
id and names its cause, so the streams alone tell the story, in order, across services.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from choreo import subjects
from choreo.envelope import H_CAUSATION_ID, H_CORRELATION_ID, H_ID, H_SOURCE, H_TIME, H_TYPE
from choreo.streamread import read_stream
from choreo.streams import CONTEXTS


@dataclass(frozen=True)
class Step:
    at: datetime
    source: str
    event_type: str
    event_id: str
    causation_id: str


async def saga_steps(js: Any, correlation_id: str) -> list[Step]:
    steps: dict[str, Step] = {}
    for context in CONTEXTS:
        for message in await read_stream(js, subjects.stream_name(context)):
            headers = message.headers
            if headers.get(H_CORRELATION_ID) != correlation_id or headers.get(H_ID) in steps:
                continue
            steps[headers[H_ID]] = Step(
                at=datetime.fromisoformat(headers[H_TIME].replace("Z", "+00:00")),
                source=headers.get(H_SOURCE, "?"),
                event_type=headers.get(H_TYPE, "?").rsplit(".", 1)[-1],
                event_id=headers[H_ID],
                causation_id=headers.get(H_CAUSATION_ID, ""),
            )
    return sorted(steps.values(), key=lambda step: step.at)


def render_text(steps: list[Step]) -> str:
    if not steps:
        return "(no events)"
    start = steps[0].at
    names = {step.event_id: step.event_type for step in steps}
    lines = []
    for step in steps:
        offset_ms = (step.at - start).total_seconds() * 1000
        cause = names.get(step.causation_id, "command")
        lines.append(f"  +{offset_ms:8.1f} ms  {step.source:<13} {step.event_type:<27} <- {cause}")
    return "\n".join(lines)


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
    return render_text(await saga_steps(js, correlation_id))
