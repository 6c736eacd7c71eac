"""The subject and naming scheme, written down in one place.

- An event's subject is its full Protobuf name, ``choreo.<context>.<version>.<EventType>``,
  so a subject carries the context, the schema version and the event type.
- One stream per bounded context: ``CHOREO_<CONTEXT>`` holding ``choreo.<context>.>``.
- Dead letters: stream ``CHOREO_DLQ`` holding ``choreo.dlq.<service>.<original subject>``.
- Durable consumers: ``<service>__<context>_<version>_<EventType>``. These names are stable
  on purpose: renaming a durable makes JetStream deliver the whole stream again.
"""

from __future__ import annotations

PREFIX = "choreo"
DLQ_STREAM = "CHOREO_DLQ"
DLQ_PREFIX = f"{PREFIX}.dlq"


def event_subject(full_name: str) -> str:
    """``choreo.order.v1.OrderCreated`` is both the Protobuf name and the subject."""
    context_of(full_name)  # validates the shape
    return full_name


def context_of(full_name: str) -> str:
    """The bounded context of an event: ``choreo.order.v1.OrderCreated`` -> ``order``."""
    parts = full_name.split(".")
    if len(parts) != 4 or parts[0] != PREFIX or not parts[2].startswith("v"):
        raise ValueError(
            f"event name {full_name!r} is not of the form choreo.<context>.v<N>.<EventType>"
        )
    return parts[1]


def version_of(full_name: str) -> int:
    """The schema version of an event: ``choreo.order.v1.OrderCreated`` -> ``1``."""
    return int(full_name.split(".")[2].removeprefix("v"))


def stream_name(context: str) -> str:
    return f"{PREFIX.upper()}_{context.upper()}"


def stream_subjects(context: str) -> list[str]:
    return [f"{PREFIX}.{context}.>"]


def durable_name(service: str, full_name: str) -> str:
    _, context, version, event_type = full_name.split(".")
    return f"{service}__{context}_{version}_{event_type}"


def dlq_subject(service: str, original_subject: str) -> str:
    return f"{DLQ_PREFIX}.{service}.{original_subject}"
