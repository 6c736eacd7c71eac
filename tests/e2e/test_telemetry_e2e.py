"""One saga is one trace: a client's own ``traceparent`` continues through all five services,
exported over standard OTLP to a receiver, and carried in the event headers even when nothing is
exported. The five services run as separate processes against a real broker."""

from __future__ import annotations

import random
import secrets
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from choreo import contracts, subjects
from choreo.envelope import H_TRACEPARENT
from choreo.streamread import read_stream
from choreo.testing import wait_for
from choreo.tracing import trace_id_of
from services.system import System, SystemConfig
from services.workload import Placed, SagaPath, request_for, wait_until_final
from shop.order.v1 import order_service_pb2_grpc as order_grpc

pytestmark = pytest.mark.timeout(180)


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A collector's trace endpoint: remembers, per trace id, the span names per service."""

    def __init__(self) -> None:
        self.spans: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            service = attributes.get("service.name", "?")
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans[span.trace_id.hex()][service].append(span.name)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture(params=["grpc", "http/protobuf"])
async def receiver(request: pytest.FixtureRequest) -> AsyncIterator[tuple[OtlpReceiver, int, str]]:
    """A collector on OTLP/gRPC (a collector's 4317) or OTLP/HTTP (its 4318, /v1/traces)."""
    collector = OtlpReceiver()
    if request.param == "grpc":
        server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        yield collector, port, "grpc"
        await server.stop(None)
        return

    async def export(http_request: web.Request) -> web.Response:
        body = trace_service_pb2.ExportTraceServiceRequest.FromString(await http_request.read())
        reply = await collector.Export(body, None)
        return web.Response(body=reply.SerializeToString(), content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", export)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield collector, port, "http/protobuf"
    await runner.cleanup()


async def place_traced_order(system: System, trace_id: str) -> str:
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
        stub = order_grpc.OrderServiceStub(channel)
        request = request_for(SagaPath.HAPPY, 0, random.Random(1))
        reply = await stub.PlaceOrder(request, metadata=(("traceparent", traceparent),))
        item = Placed(order_id=reply.order.order_id, path=SagaPath.HAPPY, placed_at=0.0)
        assert not await wait_until_final(stub, [item], timeout=60), "the order never ended"
    return item.order_id


async def test_a_clients_trace_reaches_every_service_over_otlp(
    tmp_path: Path, receiver: tuple[OtlpReceiver, int, str]
) -> None:
    collector, port, protocol = receiver
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    # http/protobuf is the specification's default: the HTTP collector gets it unasked.
    if protocol == "grpc":
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    system = System(SystemConfig(data_dir=tmp_path / "system", grpc_base_port=None, env=env))
    await system.start()
    try:
        trace_id = secrets.token_hex(16)
        await place_traced_order(system, trace_id)

        async def every_service_reported() -> bool:
            # The spans the test checks, not just any span of each service: a service exports
            # in batches, and a first batch (a relay's publish span, say) may come without them.
            services = collector.spans.get(trace_id, {})
            return any("PlaceOrder" in name for name in services.get("choreo-order", [])) and all(
                any(s.endswith(" process") for s in services.get(f"choreo-{name}", []))
                for name in ("inventory", "payment", "shipping", "notification")
            )

        try:
            await wait_for(every_service_reported, timeout=30, what="spans of all five services")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {collector.spans.get(trace_id)}") from None
        spans = collector.spans[trace_id]
        # The order service's gRPC span, and consumer spans in every reacting service.
        assert any("PlaceOrder" in name for name in spans["choreo-order"])
        for name in ("inventory", "payment", "shipping", "notification"):
            assert any(s.endswith(" process") for s in spans[f"choreo-{name}"]), spans
        # Health checks (polled by the supervisor) make no spans.
        every_name = [n for trace in collector.spans.values() for s in trace.values() for n in s]
        assert not any("grpc.health" in name for name in every_name)
    finally:
        system.stop()


async def test_without_an_exporter_events_still_carry_the_clients_trace(tmp_path: Path) -> None:
    system = System(SystemConfig(data_dir=tmp_path / "system", grpc_base_port=None))
    await system.start()
    try:
        trace_id = secrets.token_hex(16)
        order_id = await place_traced_order(system, trace_id)
        nc = await nats.connect(system.nats_url)
        try:
            js = nc.jetstream()
            headers: list[dict[str, str]] = []

            async def every_event_published() -> bool:
                # The order is final and its customer told, but InventoryShipped (inventory's
                # answer to ShipmentCreated) is off that path and may still be on its way.
                headers.clear()
                for context in contracts.contexts():
                    stream = subjects.stream_name(context)
                    for message in await read_stream(
                        js, stream, subjects.saga_filter(context, order_id)
                    ):
                        headers.append(message.headers)
                return len(headers) >= 8

            try:
                await wait_for(every_event_published, timeout=30, what="the saga's 8 events")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {[h.get('ce-type') for h in headers]}") from None
        finally:
            await nc.close()
        assert len(headers) == 8  # the happy path's events
        assert {trace_id_of(h) for h in headers} == {trace_id}, [
            h.get(H_TRACEPARENT) for h in headers
        ]
    finally:
        system.stop()
