"""The gRPC door: every request is decoded and checked against its declared rules before a
service method sees it.

The rules live in the contracts (``buf.validate`` options in ``proto/``), so clients in every
language read the same limits this server enforces; ``protovalidate`` evaluates them here. A
service registers its servicer with :func:`add_servicer` instead of the generated
``add_*Servicer_to_server``; then, for every RPC of the service:

- bytes that are not a valid request message get ``INVALID_ARGUMENT`` with a short message
  (grpc's default is ``UNKNOWN`` carrying the Python exception text);
- a request that breaks a declared rule gets ``INVALID_ARGUMENT`` with a ``google.rpc.BadRequest``
  naming each offending field (``lines[3].quantity``, ``shipping_address.line1``), and the
  service method does not run, so nothing is stored or published;
- only a request that passes reaches the service method, which then applies the rules that need
  its own data (a known SKU, the catalog's currency, ...) the same way.

Why a registration wrapper rather than a call at the top of each method: an RPC added later
cannot forget it, and undecodable bytes have to be caught in the deserializer anyway, which
only the registration can reach.

The bus is a door too: a producer may skip the gRPC door and publish straight to a stream. The
consumer checks every event it decodes with :func:`event_violations` (the same ``buf.validate``
rules, which the events' shared types carry: addresses, money, order lines, plus a NUL in any
string, which no database column can hold), before any handler runs. An invalid event never
reaches its handler: where the step has a give-up handler, the step gives up at once
(``handler_rejected``, the detail naming each field) and the give-up handler gets the event
with those fields cleared (:func:`without_invalid_fields`), so it can always record what it did
and emit the step's failure event; elsewhere it is a dead letter with the reason
:data:`INVALID_EVENT` naming each field.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import protovalidate
from buf.validate import validate_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from choreo.errors import TransientError
from choreo.grpc_errors import abort_invalid

log = logging.getLogger(__name__)

# The dead-letter reason of an event from the bus that breaks a declared rule.
INVALID_EVENT = "invalid_event"

# One validator for the process: it compiles each message type's rules once and caches them.
_VALIDATOR = protovalidate.Validator()

Context = grpc.aio.ServicerContext
UnaryBehavior = Callable[[Any, Context], Awaitable[Message]]
StreamBehavior = Callable[[Any, Context], AsyncIterator[Message]]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What the deserializer hands on for bytes that do not decode, so that the handler (which
    has a context to answer with) can refuse them cleanly."""

    message_name: str


def violations(message: Message) -> list[tuple[str, str]]:
    """(field path, description) for every declared rule ``message`` breaks; [] when valid."""
    found = []
    for violation in _VALIDATOR.collect_violations(message):
        # protovalidate reports in its own protobuf runtime; the wire form is the same schema.
        proto = validate_pb2.Violation.FromString(violation.proto.to_binary())
        found.append((field_path(proto.field), proto.message or proto.rule_id))
    return found


# A field's place in a message: (field name, index or map key, or None) from the top.
Step = tuple[str, int | str | bool | None]


@dataclass(frozen=True, slots=True)
class EventViolation:
    path: str  # as clients write it: shipping_address.line1, lines[0].sku
    description: str
    steps: tuple[Step, ...]


def event_violations(event: Message) -> list[EventViolation]:
    """What an event from the bus breaks: every declared rule a field's *value* breaks, and a
    NUL character in any string field (at any depth), which the rules of request-only fields
    keep out at the gRPC door but which an event's own scalar fields do not declare.

    A field left at its default (empty, zero, unset) is not held to its rules: an event is not
    a request, and producers of an older version, or a step that has no value to carry, leave
    fields out; consumers treat an absent value themselves. What a field does carry (a NUL in
    an address line, a negative amount, an overlong string) is checked. [] when valid."""
    found: list[EventViolation] = []
    try:
        for violation in _VALIDATOR.collect_violations(event):
            if _unset(violation.field_value):
                continue
            proto = validate_pb2.Violation.FromString(violation.proto.to_binary())
            steps = tuple(_step(element) for element in proto.field.elements)
            found.append(
                EventViolation(field_path(proto.field), proto.message or proto.rule_id, steps)
            )
    except (protovalidate.CompilationError, protovalidate.EvaluationError) as exc:
        # A broken rule in the contracts is not the producer's fault: say so, do not drop it.
        log.exception("validating a %s failed", event.DESCRIPTOR.full_name)
        return [EventViolation("", f"the event could not be validated: {exc}", ())]
    if not _may_hold_nul(event):
        return found
    named = {violation.path for violation in found}
    for steps in _nul_strings(event, ()):
        path = steps_path(steps)
        if path not in named:
            found.append(EventViolation(path, "contains a NUL character", steps))
    return found


def _may_hold_nul(event: Message) -> bool:
    """False when no string of ``event`` can hold a NUL: UTF-8 writes NUL as the byte 0, and
    the wire form copies strings (map keys too) byte for byte, so bytes without a 0 have none.
    Serializing is a C call; walking every field in Python costs many times more, and few
    events have a 0 byte at all (an empty nested message, a fixed-width number)."""
    return b"\x00" in event.SerializePartialToString()


def without_invalid_fields(event: Message, found: list[EventViolation]) -> Message:
    """A copy of ``event`` with every field named in ``found`` cleared: what a give-up handler
    may record and pass on (a database refuses a NUL; an invalid value must not travel on in
    the step's failure event)."""
    copy = type(event)()
    copy.CopyFrom(event)
    for violation in found:
        if violation.steps:
            _clear(copy, violation.steps)
    return copy


def _step(element: validate_pb2.FieldPathElement) -> Step:
    match element.WhichOneof("subscript"):
        case "index":
            return (element.field_name, int(element.index))
        case "bool_key":
            return (element.field_name, bool(element.bool_key))
        case "int_key":
            return (element.field_name, int(element.int_key))
        case "uint_key":
            return (element.field_name, int(element.uint_key))
        case "string_key":
            return (element.field_name, str(element.string_key))
    return (element.field_name, None)


def steps_path(steps: tuple[Step, ...]) -> str:
    text = ""
    for name, subscript in steps:
        text += f".{name}" if text else name
        if isinstance(subscript, bool):
            text += f"[{str(subscript).lower()}]"
        elif isinstance(subscript, str):
            text += f"[{json.dumps(subscript)}]"
        elif subscript is not None:
            text += f"[{subscript}]"
    return text


def _clear(message: Message, steps: tuple[Step, ...]) -> None:
    """Clear the field at ``steps`` (a list element or map value: set to its default)."""
    try:
        for name, subscript in steps[:-1]:
            container = getattr(message, name)
            message = container if subscript is None else container[subscript]
        name, subscript = steps[-1]
        if subscript is None:
            message.ClearField(name)
            return
        container = getattr(message, name)
        item = container[subscript]
        if isinstance(item, Message):
            item.Clear()
        elif isinstance(subscript, str) and "\x00" in subscript:
            del container[subscript]
        else:
            container[subscript] = type(item)()
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        log.warning("could not clear %s of a %s", steps_path(steps), message.DESCRIPTOR.full_name)


def _unset(value: object) -> bool:
    if value is None or isinstance(value, (str, bytes, bool, int, float)):
        return not value
    if isinstance(value, Message):
        return not value.ListFields()
    try:
        return len(value) == 0  # type: ignore[arg-type]
    except TypeError:
        return False


def _nul_strings(message: Message, prefix: tuple[Step, ...]) -> list[tuple[Step, ...]]:
    """Places of string fields (also in repeated fields, maps and nested messages) with a NUL."""
    found: list[tuple[Step, ...]] = []
    for descriptor, value in message.ListFields():
        name = descriptor.name
        if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            value_field = descriptor.message_type.fields_by_name["value"]
            for key, item in value.items():
                here = (*prefix, (name, key))
                if isinstance(key, str) and "\x00" in key:
                    found.append(here)
                elif value_field.message_type is not None:
                    found += _nul_strings(item, here)
                elif isinstance(item, str) and "\x00" in item:
                    found.append(here)
        elif descriptor.is_repeated:
            for index, item in enumerate(value):
                if isinstance(item, Message):
                    found += _nul_strings(item, (*prefix, (name, index)))
                elif isinstance(item, str) and "\x00" in item:
                    found.append((*prefix, (name, index)))
        elif isinstance(value, Message):
            found += _nul_strings(value, (*prefix, (name, None)))
        elif isinstance(value, str) and "\x00" in value:
            found.append((*prefix, (name, None)))
    return found


def field_path(path: validate_pb2.FieldPath) -> str:
    """A path as clients write it: ``lines[0].quantity``, ``shipping_address.city``."""
    text = ""
    for element in path.elements:
        text += f".{element.field_name}" if text else element.field_name
        match element.WhichOneof("subscript"):
            case "index":
                text += f"[{element.index}]"
            case "bool_key":
                text += f"[{str(element.bool_key).lower()}]"
            case "int_key":
                text += f"[{element.int_key}]"
            case "uint_key":
                text += f"[{element.uint_key}]"
            case "string_key":
                text += f"[{json.dumps(element.string_key)}]"
            case None:
                pass
    return text


async def admit(request: Message | Undecodable, context: Context) -> None:
    """Returns only for a decoded request that keeps every declared rule; aborts otherwise."""
    if isinstance(request, Undecodable):
        await _abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request is not a valid {request.message_name} message",
        )
    try:
        found = violations(request)
    except (protovalidate.CompilationError, protovalidate.EvaluationError):
        # A broken rule in our own contracts, not the client's fault: log it, answer briefly.
        log.exception("validating a %s failed", request.DESCRIPTOR.full_name)
        await _abort(context, grpc.StatusCode.INTERNAL, "the request could not be validated")
    if found:
        await abort_invalid(context, found)


def add_servicer(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Registers ``servicer`` for every RPC of ``service``, each behind :func:`admit`."""
    handlers = {method.name: _handler(method, servicer) for method in service.methods}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


# Failures of a connection, not of the request (a Postgres connection reset in a transaction,
# a pool that timed out, a store's own TransientError).
RETRYABLE: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, TransientError)


def _handler(method: MethodDescriptor, servicer: object) -> grpc.RpcMethodHandler[Any, Any]:
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)

    def deserialize(data: bytes) -> Message | Undecodable:
        try:
            return request_type.FromString(data)
        except DecodeError:
            return Undecodable(method.input_type.full_name)

    if method.client_streaming:
        raise NotImplementedError(f"{method.full_name}: client streaming is not supported")
    if method.server_streaming:
        stream: StreamBehavior = getattr(servicer, method.name)

        async def serve_stream(request: Message | Undecodable, context: Context) -> Any:
            await admit(request, context)
            async for response in stream(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(
            serve_stream, deserialize, response_type.SerializeToString
        )
    unary: UnaryBehavior = getattr(servicer, method.name)

    async def serve(request: Message | Undecodable, context: Context) -> Message:
        await admit(request, context)
        try:
            return await unary(request, context)
        except RETRYABLE as exc:
            # A database or broker connection lost mid-call: the client may try again (with
            # its idempotency key), which UNKNOWN would not tell it.
            log.warning("%s: %r; answered UNAVAILABLE", method.full_name, exc)
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"try again: {exc!r}")

    return grpc.unary_unary_rpc_method_handler(serve, deserialize, response_type.SerializeToString)


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")
