"""gRPC errors the way clients expect them: a status code plus google.rpc details.

``INVALID_ARGUMENT`` carries a ``google.rpc.BadRequest`` with one ``FieldViolation`` per bad
field (field path as in the request, e.g. ``lines[0].quantity``), so a client in any language
can point at the exact field; the message repeats them for people reading logs. Both are
bounded (the first few violations, short descriptions) so that they always fit in trailers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

# The status travels in trailers, which clients cap (grpc's default is 8 KiB for all metadata):
# past the cap a client sees RESOURCE_EXHAUSTED and none of the violations. A request with 100
# bad lines has hundreds, so only the first few are reported, each description cut short; the
# message says how many more there were. Fixing those and retrying shows the next ones.
MAX_REPORTED_VIOLATIONS = 10
MAX_DESCRIPTION_CHARS = 120


def bad_request_status(violations: Iterable[tuple[str, str]]) -> grpc.Status:
    found = list(violations)
    reported = found[:MAX_REPORTED_VIOLATIONS]
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=field, description=_shortened(description)
            )
            for field, description in reported
        ]
    )
    packed = any_pb2.Any()
    packed.Pack(detail)
    summary = "; ".join(f"{v.field}: {v.description}" for v in detail.field_violations)
    if len(found) > len(reported):
        summary += f" (and {len(found) - len(reported)} more)"
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=f"invalid request: {summary}", details=[packed]
    )
    return rpc_status.to_status(status)


def _shortened(description: str) -> str:
    if len(description) <= MAX_DESCRIPTION_CHARS:
        return description
    return description[: MAX_DESCRIPTION_CHARS - 3] + "..."


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
