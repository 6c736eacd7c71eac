"""The subject and naming scheme, written down in one place.

- An event's subject is its full Protobuf name followed by the saga's correlation id (the order
  id in the reference system): ``<namespace>.v<N>.<EventType>.<correlation id>``, e.g.
  ``shop.order.v1.OrderCreated.<order id>`` or ``acme.loyalty.v1.PointsAwarded.<order id>``.
  So a subject carries the context, the schema version and the event type, and one saga's
  events are read with a filter on the last token instead of a scan of whole streams.
  Consumers filter on ``<full name>.>``; permissions are granted per context
  (``<namespace>.>``).
- The *namespace* is the Protobuf package without its version (``shop.order``,
  ``acme.loyalty``); it has at least two tokens, an organisation and a context, and it is the
  *context*'s name, whole. No organisation is special, the runtime's own included, so every
  name below is a pure function of an event's full name.
- The service that owns a context, and publishes its events, is named by the context's last
  token (``order``, ``loyalty``): its durables, dead letters and broker user carry that name.
- A correlation id that is not a safe subject token (``[A-Za-z0-9_-]``, at most 128 long) is
  replaced by ``h-`` and a hash of it: the header still carries it exactly, the subject only
  has to narrow a look-up.
- One stream per context: the namespace in capitals with ``_`` for ``.`` (``SHOP_ORDER``,
  ``ACME_LOYALTY``), holding ``<namespace>.>``.
- Dead letters: stream ``CHOREO_DLQ`` holding ``choreo.dlq.<service>.<original subject>``.
  The service token is the letter's origin: each service's broker user may publish only under
  its own, so a letter's service is read from its subject, never from a header.
- Durable consumers: ``<service>__<context>_<version>_<EventType>`` (``.`` in the context
  becomes ``_``). These names are stable on purpose: renaming a durable makes JetStream
  deliver the whole stream again.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable

PREFIX = "choreo"
DLQ_STREAM = "CHOREO_DLQ"
DLQ_PREFIX = f"{PREFIX}.dlq"


_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_VERSION = re.compile(r"v[0-9]+")
_PROTO_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def subject_token(correlation_id: str) -> str:
    """The correlation id as the subject's last token (hashed when it is not a safe token)."""
    if _SAFE_TOKEN.fullmatch(correlation_id):
        return correlation_id
    return "h-" + hashlib.sha256(correlation_id.encode()).hexdigest()[:32]


def event_subject(full_name: str, correlation_id: str) -> str:
    """``shop.order.v1.OrderCreated.<order id>``: the Protobuf name, then the saga."""
    parse_event_name(full_name)  # validates the shape
    return f"{full_name}.{subject_token(correlation_id)}"


def event_type_filter(full_name: str) -> str:
    """Every event of one type, whatever saga it belongs to."""
    return f"{full_name}.>"


def saga_filter(context: str, correlation_id: str) -> str:
    """Every event of one saga in one context's stream."""
    return f"{namespace_of(context)}.*.*.{subject_token(correlation_id)}"


def event_type_of_subject(subject: str) -> str:
    """``shop.order.v1.OrderCreated.<id>`` -> ``shop.order.v1.OrderCreated`` (a bare event
    name is returned as it is)."""
    tokens = subject.split(".")
    if len(tokens) >= 2 and _VERSION.fullmatch(tokens[-2]):
        return subject
    return ".".join(tokens[:-1])


# A handful of names, parsed several times per event otherwise; bounded, since names also come
# off the wire.
@functools.lru_cache(maxsize=4096)
def parse_event_name(full_name: str) -> tuple[str, str, str]:
    """``acme.loyalty.v1.PointsAwarded`` -> ``("acme.loyalty", "v1", "PointsAwarded")``.

    Raises ``ValueError`` saying the expected form when the name is not an event name.
    """
    tokens = full_name.split(".")
    if (
        len(tokens) < 4
        or not _VERSION.fullmatch(tokens[-2])
        or not all(_PROTO_TOKEN.fullmatch(token) for token in tokens)
    ):
        raise ValueError(
            f"event name {full_name!r} is not of the form <organisation>.<context>.v<N>.<EventType>"
            " (a message in a versioned Protobuf package of at least two names, e.g."
            " shop.order.v1.OrderCreated or acme.loyalty.v1.PointsAwarded)"
        )
    return ".".join(tokens[:-2]), tokens[-2], tokens[-1]


def context_of(full_name: str) -> str:
    """The context of an event: ``shop.order.v1.OrderCreated`` -> ``shop.order``."""
    namespace, _, _ = parse_event_name(full_name)
    return namespace  # a context is its namespace


def namespace_of(context: str) -> str:
    """A context is its namespace: ``shop.order`` -> ``shop.order``.

    Raises ``ValueError`` for a name of one token (``order``): a context names its
    organisation too, so two teams' ``order`` contexts never share a stream.
    """
    if "." not in context:
        raise ValueError(
            f"context {context!r} has no organisation: write it as the Protobuf package"
            f" without its version, e.g. 'shop.{context}'"
        )
    return context


def service_of(context: str) -> str:
    """The service that owns a context: ``order`` -> ``order``, ``acme.loyalty`` -> ``loyalty``."""
    return context.rsplit(".", 1)[-1]


def version_of(full_name: str) -> int:
    """The schema version of an event: ``shop.order.v1.OrderCreated`` -> ``1``."""
    _, version, _ = parse_event_name(full_name)
    return int(version.removeprefix("v"))


def same_event_type(a: str, b: str) -> bool:
    """Same context and event type, whatever the version (False for names that are not events)."""
    try:
        namespace_a, _, type_a = parse_event_name(a)
        namespace_b, _, type_b = parse_event_name(b)
    except ValueError:
        return False
    return namespace_a == namespace_b and type_a == type_b


def stream_name(context: str) -> str:
    return namespace_of(context).upper().replace(".", "_")


def stream_subjects(context: str) -> list[str]:
    return [f"{namespace_of(context)}.>"]


@functools.lru_cache(maxsize=4096)
def durable_name(service: str, full_name: str) -> str:
    namespace, version, event_type = parse_event_name(full_name)
    context = namespace.replace(".", "_")
    return f"{service}__{context}_{version}_{event_type}"


def dlq_subject(service: str, original_subject: str) -> str:
    """``choreo.dlq.<service>.<original subject>``: the service is one token, the one the
    broker lets only that service's user publish under (``choreo.permissions``)."""
    return f"{DLQ_PREFIX}.{service}.{original_subject}"


def parse_dlq_subject(subject: str) -> tuple[str, str]:
    """``choreo.dlq.payment.shop.inventory.v1.InventoryReserved.o-1`` ->
    ``("payment", "shop.inventory.v1.InventoryReserved.o-1")``; ``("", "")`` for a subject
    that is not a dead letter's."""
    prefix = f"{DLQ_PREFIX}."
    if not subject.startswith(prefix):
        return "", ""
    service, _, original = subject.removeprefix(prefix).partition(".")
    if not _SAFE_TOKEN.fullmatch(service) or not original:
        return "", ""
    return service, original


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` is one token, a final ``>`` one or more."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for i, token in enumerate(wanted):
        if token == ">" and i == len(wanted) - 1:
            return len(tokens) > i
        if i >= len(tokens) or (token != "*" and token != tokens[i]):
            return False
    return len(tokens) == len(wanted)


def dlq_saga_filters(contexts: Iterable[str], correlation_id: str, service: str = "*") -> list[str]:
    """The dead letters of one saga: ``choreo.dlq.<service>.<namespace>.v<N>.<Type>.<id>``,
    one filter per context (a namespace may have any number of tokens, so no single wildcard
    pattern ends on the id for all of them)."""
    token = subject_token(correlation_id)
    return [f"{DLQ_PREFIX}.{service}.{namespace_of(c)}.*.*.{token}" for c in contexts]
