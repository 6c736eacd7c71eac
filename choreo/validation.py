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

from choreo.grpc_errors import abort_invalid

log = logging.getLogger(__name__)

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
        return await unary(request, context)

    return grpc.unary_unary_rpc_method_handler(serve, deserialize, response_type.SerializeToString)


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")
