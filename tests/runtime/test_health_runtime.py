"""Health against a real broker: a consumer whose batch never finishes turns the service
NOT_SERVING, and it is SERVING again once the consumer moves."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from choreo.broker import EmbeddedBroker
from choreo.consumer import Subscription
from choreo.handling import HandlerContext
from choreo.service import ServiceDefinition, ServiceRuntime
from choreo.settings import RuntimeSettings
from choreo.testing import publish_event, wait_for
from tests.testkit import desk_events

pytestmark = pytest.mark.usefixtures("testkit_contracts")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_stalled_consumer_is_not_serving_until_it_moves_again(
    broker: EmbeddedBroker, js: Any, tmp_path: Path
) -> None:
    release = asyncio.Event()

    async def stuck(ctx: HandlerContext, event: object) -> None:
        await release.wait()  # a handler stuck on something (well within its timeout)

    definition = ServiceDefinition(
        name="probe",
        handlers={},
        extra_subscriptions=[
            Subscription("probe", {desk_events.TicketOpened: stuck}, name="stuck")
        ],
    )
    settings = RuntimeSettings.from_env(
        {
            "CHOREO_NATS_URL": broker.url,
            "CHOREO_DATABASE_URL": f"sqlite:///{tmp_path}/probe.db",
            "CHOREO_FETCH_TIMEOUT_S": "0.2",
            "CHOREO_HEALTH_CONSUMER_STALL_S": "1",
        },
        service="probe",
    )
    runtime = ServiceRuntime(definition, settings)
    await runtime.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def status_is(wanted: int) -> Any:
                async def check() -> bool:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    return bool(reply.status == wanted)

                return check

            assert await status_is(SERVING)()
            await publish_event(js, desk_events.TicketOpened(ticket_id="o-1"), aggregate_id="o-1")
            await wait_for(status_is(NOT_SERVING), timeout=5, what="NOT_SERVING")
            assert runtime.health is not None
            assert "probe__stuck" in runtime.health.verdict.reasons[0]

            release.set()
            await wait_for(status_is(SERVING), timeout=5, what="SERVING again")
    finally:
        release.set()
        await runtime.stop()
