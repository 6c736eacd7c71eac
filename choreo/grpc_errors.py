"""gRPC errors the way clients expect them: a status code plus google.rpc details.

``INVALID_ARGUMENT`` carries a ``google.rpc.BadRequest`` with one ``FieldViolation`` per bad
field (field path as in the request, e.g. ``lines[0].quantity``), so a client in any language
can point at the exact field; the message repeats them for people reading logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


def bad_request_status(violations: Iterable[tuple[str, str]]) -> grpc.Status:
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in violations
        ]
    )
    packed = any_pb2.Any()
    packed.Pack(detail)
    summary = "; ".join(f"{v.field}: {v.description}" for v in detail.field_violations)
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=f"invalid request: {summary}", details=[packed]
    )
    return rpc_status.to_status(status)


async def abort_invalid(
    context: grpc.aio.ServicerContext, violations: Iterable[tuple[str, str]]
) -> NoReturn:
    await context.abort_with_status(bad_request_status(violations))
    raise AssertionError("unreachable: abort_with_status raises")


async def abort_not_found(context: grpc.aio.ServicerContext, what: str) -> NoReturn:
    await context.abort(grpc.StatusCode.NOT_FOUND, f"{what} not found")
    raise AssertionError("unreachable: abort raises")


def field_violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """Read the BadRequest field violations back from an error (for clients and tests)."""
    status = rpc_status.from_call(error)
    violations: list[tuple[str, str]] = []
    if status is None:
        return violations
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [(v.field, v.description) for v in bad_request.field_violations]
    return violations
