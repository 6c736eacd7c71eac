"""The serial naive build (``choreo bench --profile`` still runs it, and the FastStream baseline
imports its glue) completes real sagas: the same handlers and stores on plain nats-py, as five
processes on a real broker, every path ending in its final state."""

from __future__ import annotations

from pathlib import Path

import grpc

from services.system import System, SystemConfig
from services.workload import SagaPath, place_all, wait_until_final
from shop.order.v1 import order_service_pb2_grpc as order_grpc
from tools.bench import NAIVE_ARGV


async def test_the_naive_build_runs_every_path_to_its_final_state(tmp_path: Path) -> None:
    system = System(
        SystemConfig(data_dir=tmp_path, grpc_base_port=None, service_argv=NAIVE_ARGV, env={})
    )
    await system.start()
    try:
        paths = [path for path in SagaPath for _ in range(3)]
        async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
            stub: order_grpc.OrderServiceAsyncStub = order_grpc.OrderServiceStub(channel)
            placed = await place_all(stub, paths, concurrency=4, seed=7)
            unfinished = await wait_until_final(stub, placed, timeout=60)
        assert unfinished == []
        assert len(placed) == len(paths)
        for item in placed:
            assert item.status == item.path.expected_status, item
        # The processes really were the naive build, not ``choreo serve``.
        assert system.supervisor is not None
        for process in system.supervisor.processes.values():
            assert process.spec.argv[1:3] == list(NAIVE_ARGV)
    finally:
        system.stop()
