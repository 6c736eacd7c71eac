"""The benchmark's baseline, the FastStream build, completes real sagas: the same handlers and
stores on faststream[nats], as five processes on a real broker, each saga ending in the state
its path calls for; and the work was done by FastStream's durable consumers, not choreo's."""

from __future__ import annotations

from pathlib import Path

import grpc
import nats

from services.registry import SERVICE_NAMES
from services.system import System, SystemConfig
from services.workload import SagaPath, place_all, wait_until_final
from shop.order.v1 import events_pb2 as order_events
from shop.order.v1 import order_service_pb2_grpc as order_grpc
from tools.bench import FASTSTREAM_ARGV
from tools.faststream_build import DURABLE_PREFIX, durable_name

PATHS = [
    SagaPath.HAPPY,
    SagaPath.PAYMENT_DECLINED,
    SagaPath.HAPPY,
    SagaPath.PAYMENT_DECLINED,
    SagaPath.OUT_OF_STOCK,
    SagaPath.UNSERVICEABLE,
]
REASONS = {
    SagaPath.HAPPY: order_events.CANCELLATION_REASON_UNSPECIFIED,
    SagaPath.PAYMENT_DECLINED: order_events.CANCELLATION_REASON_PAYMENT_FAILED,
    SagaPath.OUT_OF_STOCK: order_events.CANCELLATION_REASON_INVENTORY_UNAVAILABLE,
    SagaPath.UNSERVICEABLE: order_events.CANCELLATION_REASON_SHIPPING_FAILED,
}


async def test_the_faststream_build_runs_each_saga_to_its_final_state(tmp_path: Path) -> None:
    system = System(
        SystemConfig(data_dir=tmp_path, grpc_base_port=None, service_argv=FASTSTREAM_ARGV, env={})
    )
    await system.start()
    try:
        async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
            stub: order_grpc.OrderServiceAsyncStub = order_grpc.OrderServiceStub(channel)
            placed = await place_all(stub, PATHS, concurrency=3, seed=11)
            unfinished = await wait_until_final(stub, placed, timeout=60)
        assert unfinished == []
        assert len(placed) == len(PATHS)
        for item in placed:
            assert item.status == item.path.expected_status, item
            assert item.cancellation_reason == REASONS[item.path], item
        # The processes were the FastStream build, not `choreo serve` ...
        assert system.supervisor is not None
        for process in system.supervisor.processes.values():
            assert process.spec.argv[1:3] == list(FASTSTREAM_ARGV)
        # ... and its durable pull consumers did the work: one per subscription, each of them
        # delivered and acked everything; choreo's own durables were never made.
        nc = await nats.connect(system.nats_url)
        try:
            js = nc.jetstream()
            durables: dict[str, int] = {}
            for stream in await js.streams_info():
                assert stream.config.name is not None
                for info in await js.consumers_info(stream.config.name):
                    name = info.name
                    assert name.startswith(DURABLE_PREFIX), name
                    assert info.config.durable_name == name
                    assert info.num_pending == 0 and info.num_ack_pending == 0, info
                    assert info.delivered is not None
                    durables[name] = info.delivered.consumer_seq or 0
        finally:
            await nc.close()
        for service in SERVICE_NAMES:
            assert any(name.startswith(f"{DURABLE_PREFIX}{service}__") for name in durables)
        assert sum(durables.values()) > 2 * len(PATHS), durables
        # Notification tells "shipped" from the order's OrderShipped (the order service decides
        # the final state), not from shipping's ShipmentCreated; both happy sagas were told.
        shipped = durable_name("notification", "shop.order.v1.OrderShipped")
        assert durables.get(shipped, 0) >= PATHS.count(SagaPath.HAPPY), durables
        assert durable_name("notification", "shop.shipping.v1.ShipmentCreated") not in durables
        # FastStream's per-message access lines ("Received", "Processed") are below the
        # services' log level: the benchmark does not time two log lines per message.
        for process in system.supervisor.processes.values():
            assert process.spec.log_path is not None
            log = process.spec.log_path.read_text(encoding="utf-8", errors="replace")
            assert "Processed" not in log and "Received" not in log, log[-2000:]
    finally:
        system.stop()
