"""A call that fails on a lost connection (a Postgres connection reset mid-transaction, say)
is answered UNAVAILABLE, so the client knows to try again, not UNKNOWN; any other failure is
still the servicer's own error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from choreo import validation
from tests.testkit import desk_grpc, desk_service


class Failing(desk_grpc.DeskServiceServicer):
    """A desk API whose GetTicket fails the way it is told to."""

    def __init__(self) -> None:
        self.error: BaseException = ConnectionResetError("Connection reset by peer")

    async def GetTicket(self, request: Any, context: Any) -> Any:
        raise self.error


@pytest.fixture
async def stub_and_servicer() -> AsyncIterator[tuple[Any, Failing]]:
    servicer = Failing()  # type: ignore[abstract]  # the other RPCs answer UNIMPLEMENTED
    server = grpc.aio.server()
    validation.add_servicer(
        server, desk_service.DESCRIPTOR.services_by_name["DeskService"], servicer
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield desk_grpc.DeskServiceStub(channel), servicer
    await server.stop(None)


async def test_a_lost_connection_is_unavailable(stub_and_servicer: tuple[Any, Failing]) -> None:
    stub, _ = stub_and_servicer
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetTicket(desk_service.GetTicketRequest(ticket_id="o-1"))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "try again" in (refused.value.details() or "")


async def test_a_bug_is_not_dressed_as_unavailable(stub_and_servicer: tuple[Any, Failing]) -> None:
    stub, servicer = stub_and_servicer
    servicer.error = KeyError("a bug")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetTicket(desk_service.GetTicketRequest(ticket_id="o-1"))
    assert refused.value.code() == grpc.StatusCode.UNKNOWN
