"""A TypeScript program (clients/ts/saga-client.ts) uses the contracts against the running system.

It only has gen/ts and public npm libraries (@grpc/grpc-js, @bufbuild/protobuf, the NATS
JetStream client): it places a happy and an out-of-stock order, watches both to their end,
reads each saga's events through durable consumers of its own and decodes them, and reads the
field a bad request names from the google.rpc.BadRequest trailer. Here the five services run
as separate processes against a real broker, and what the program reports is checked against
the system's own view.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest

from choreo import timeline
from services.system import System, SystemConfig
from services.workload import SagaPath, request_for
from shop.order.v1 import order_service_pb2 as order_pb
from shop.order.v1 import order_service_pb2_grpc as order_grpc

pytestmark = pytest.mark.timeout(240)

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENT = REPO_ROOT / "clients" / "ts" / "saga-client.ts"
TSX = REPO_ROOT / "node_modules" / ".bin" / "tsx"
TSC = REPO_ROOT / "node_modules" / ".bin" / "tsc"
PYTHON_EXAMPLE = REPO_ROOT / "clients" / "python" / "downstream_consumer.py"

HAPPY = [
    "InventoryReserved",
    "InventoryShipped",
    "NotificationSent",
    "OrderConfirmed",
    "OrderCreated",
    "OrderShipped",
    "PaymentCompleted",
    "ShipmentCreated",
]
OUT_OF_STOCK = ["InventoryReservationFailed", "NotificationSent", "OrderCancelled", "OrderCreated"]


def _node_tool(path: Path) -> Path:
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH: install Node.js 20+ to run the TypeScript client")
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make npm` (npm ci)")
    return path


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with tempfile.TemporaryDirectory(prefix="choreo-ts-") as data_dir:
        running = System(SystemConfig(data_dir=Path(data_dir), grpc_base_port=None))
        try:
            asyncio.run(running.start())
            yield running
            codes = running.stop()
            assert all(code == 0 for code in codes.values()), f"unclean shutdown: {codes}"
        finally:
            running.stop()


def test_the_typescript_client_type_checks_against_gen_ts() -> None:
    result = subprocess.run(
        [str(_node_tool(TSC)), "-p", str(CLIENT.parent / "tsconfig.json")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def _summary(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("SUMMARY ")]
    assert len(lines) == 1, stdout
    summary: dict[str, Any] = json.loads(lines[0].removeprefix("SUMMARY "))
    return summary


async def _final_order(address: str, order_id: str) -> order_pb.Order:
    async with grpc.aio.insecure_channel(address) as channel:
        stub: order_grpc.OrderServiceAsyncStub = order_grpc.OrderServiceStub(channel)
        response = await stub.GetOrder(order_pb.GetOrderRequest(order_id=order_id), timeout=10)
    return response.order


async def _event_types(nats_url: str, order_id: str) -> list[str]:
    nc = await nats.connect(nats_url)
    try:
        steps = await timeline.saga_steps(nc.jetstream(), order_id)
    finally:
        await nc.close()
    return sorted(step.event_type for step in steps)


def test_the_typescript_client_runs_both_sagas_and_reads_their_events(system: System) -> None:
    result = subprocess.run(
        [
            str(_node_tool(TSX)),
            str(CLIENT),
            "--grpc",
            system.addresses["order"],
            "--nats",
            system.nats_url,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    summary = _summary(result.stdout)
    assert summary["happy"]["status"] == "SHIPPED"
    assert summary["happy"]["statuses"][-1] == "SHIPPED"
    assert summary["happy"]["events"] == HAPPY
    assert summary["out_of_stock"]["status"] == "CANCELLED"
    assert summary["out_of_stock"]["events"] == OUT_OF_STOCK
    assert summary["bad_request"] == {"code": "INVALID_ARGUMENT", "fields": ["lines[0].quantity"]}

    # What the program saw is what the system holds: the orders exist in these final states,
    # and the streams hold exactly these events for them (read here by the Python runtime).
    for path, status, events in [
        ("happy", order_pb.ORDER_STATUS_SHIPPED, HAPPY),
        ("out_of_stock", order_pb.ORDER_STATUS_CANCELLED, OUT_OF_STOCK),
    ]:
        order_id = summary[path]["order_id"]
        order = asyncio.run(_final_order(system.addresses["order"], order_id))
        assert order.status == status, path
        assert order.customer_notified, path
        types = asyncio.run(_event_types(system.nats_url, order_id))
        assert Counter(name.rsplit(".", 1)[-1] for name in types) == Counter(events), path


async def _place_happy_order(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        stub: order_grpc.OrderServiceAsyncStub = order_grpc.OrderServiceStub(channel)
        request = request_for(SagaPath.HAPPY, 7, random.Random(7))
        placed = (await stub.PlaceOrder(request, timeout=10)).order
        async for _ in stub.WatchOrder(
            order_pb.WatchOrderRequest(order_id=placed.order_id), timeout=60
        ):
            pass
    return placed.order_id


def test_the_python_downstream_example_reads_a_payment_with_its_own_durable(
    system: System,
) -> None:
    # The example of docs/downstream.md, run here so that it keeps working (same system).
    order_id = asyncio.run(_place_happy_order(system.addresses["order"]))

    result = subprocess.run(
        [sys.executable, str(PYTHON_EXAMPLE), "--nats", system.nats_url, "--until", order_id],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    line = f"PaymentCompleted order={order_id} "
    [printed] = [text for text in result.stdout.splitlines() if text.startswith(line)]
    assert printed.endswith(f"USD correlation={order_id}")
