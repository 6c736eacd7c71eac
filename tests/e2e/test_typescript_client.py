"""A TypeScript program (clients/ts/saga-client.ts) uses the contracts against the running system.

It only has the npm package @choreo/shop-contracts and public npm libraries (@grpc/grpc-js,
@bufbuild/protobuf, the NATS JetStream client): it places a happy and an out-of-stock order,
watches both to their end, reads each saga's events through durable consumers of its own and
decodes them, and reads the field a bad request names from the google.rpc.BadRequest trailer.
The package is packed by scripts/pack_contracts.sh and installed from its tarball into a
project of its own, as a team outside this repository would, so the client is type-checked and
run against what the tarball holds, never against gen/ts. Here the five services run as
separate processes against a real broker, and what the program reports is checked against the
system's own view.
"""

from __future__ import annotations

import asyncio
import json
import os
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
PACK_CONTRACTS = REPO_ROOT / "scripts" / "pack_contracts.sh"
CONTRACTS_PACKAGE_JSON = REPO_ROOT / "contracts" / "npm" / "package.json"
PACKAGE = "@choreo/shop-contracts"
# The client's other libraries, linked from the repo's node_modules (npm ci): Node and tsc
# follow a link to its real path, so what these import in turn is found there.
LINKED = ["@grpc/grpc-js", "@nats-io/jetstream", "@nats-io/transport-node", "@types/node"]

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


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ts_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project of its own with the contracts installed from their tarball and the client in it."""
    _node_tool(TSC)
    _node_tool(TSX)
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not on PATH: install Node.js 20+ (with npm) to pack the contracts")
    root = tmp_path_factory.mktemp("ts-client")

    packed = _run(["bash", str(PACK_CONTRACTS), str(root / "dist")], REPO_ROOT, 300)
    assert packed.returncode == 0, packed.stdout + packed.stderr
    tarball = Path(packed.stdout.strip().splitlines()[-1])
    assert tarball.is_file() and tarball.parent == root / "dist", packed.stdout

    project = root / "project"
    project.mkdir()
    (project / "package.json").write_text(
        json.dumps({"name": "ts-client-check", "private": True, "type": "module"}, indent=2)
    )
    # @bufbuild/protobuf, the package's one dependency, comes from npm's cache (npm ci put it
    # there), else from the registry.
    installed = _run(
        [npm, "install", "--no-audit", "--no-fund", "--prefer-offline", str(tarball)],
        project,
        300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    # After the install, so npm never sees (or prunes through) the links.
    for name in LINKED:
        target = REPO_ROOT / "node_modules" / name
        if not target.is_dir():
            pytest.fail(f"{target} is missing: run `make npm` (npm ci)")
        link = project / "node_modules" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, link, target_is_directory=True)

    shutil.copy(CLIENT, project / CLIENT.name)
    shutil.copy(CLIENT.parent / "tsconfig.json", project / "tsconfig.json")
    return project


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


def test_the_contracts_package_installs_with_its_proto_files(ts_project: Path) -> None:
    installed = ts_project / "node_modules" / PACKAGE
    manifest = json.loads((installed / "package.json").read_text())
    expected = json.loads(CONTRACTS_PACKAGE_JSON.read_text())

    assert manifest["name"] == PACKAGE
    assert manifest["version"] == expected["version"]
    assert (installed / "proto" / "shop" / "order" / "v1" / "events.proto").is_file()
    assert (installed / "shop" / "order" / "v1" / "events_pb.js").is_file()
    assert (installed / "shop" / "order" / "v1" / "events_pb.d.ts").is_file()


def test_the_typescript_client_type_checks_against_the_package(ts_project: Path) -> None:
    result = _run([str(TSC), "-p", str(ts_project / "tsconfig.json")], ts_project, 120)

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


def test_the_typescript_client_runs_both_sagas_and_reads_their_events(
    ts_project: Path, system: System
) -> None:
    result = _run(
        [
            str(TSX),
            str(ts_project / CLIENT.name),
            "--grpc",
            system.addresses["order"],
            "--nats",
            system.nats_url,
        ],
        ts_project,
        180,
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
