"""The README's hello service beside the whole reference system, as Getting started runs it:
its CustomerGreeted shows in `choreo saga` and in the web console's timeline of the saga (with
its contract named by CHOREO_CONTRACTS), and `choreo audit` still finds nothing wrong."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from choreo import subjects
from choreo.broker import free_port
from choreo.streamread import read_stream
from choreo.supervisor import ProcessSpec, Supervisor
from choreo.testing import wait_for
from services.system import System, SystemConfig
from services.workload import SagaPath, request_for
from shop.order.v1 import order_service_pb2 as order_pb
from shop.order.v1 import order_service_pb2_grpc as order_grpc

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello"
GENERATED = HELLO / "gen" / "python"
CHOREO = str(Path(sys.executable).parent / "choreo")
# What an operator tool needs to know the hello contract: its name, and its generated code.
OPERATOR_ENV = {
    **os.environ,
    "CHOREO_CONTRACTS": "acme.hello.v1",
    "PYTHONPATH": str(GENERATED),
}


@pytest.fixture(scope="module")
def system_with_hello(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    data_dir = tmp_path_factory.mktemp("system")
    running = System(SystemConfig(data_dir=data_dir, grpc_base_port=None))
    port = free_port("127.0.0.1")
    hello = None
    try:
        asyncio.run(running.start())
        hello = Supervisor(
            [
                ProcessSpec(
                    name="hello",
                    argv=[CHOREO, "serve", "hello", "--app", "hello_service:build"],
                    env={
                        "PYTHONPATH": os.pathsep.join([str(HELLO), str(GENERATED)]),
                        "CHOREO_NATS_URL": running.nats_url,
                        "CHOREO_DATABASE_URL": f"sqlite:///{data_dir / 'hello.db'}",
                        "CHOREO_GRPC_HOST": "127.0.0.1",
                        "CHOREO_GRPC_PORT": str(port),
                    },
                    grpc_address=f"127.0.0.1:{port}",
                    log_path=data_dir / "hello.log",
                )
            ]
        )
        asyncio.run(hello.start_all(timeout=60))
        yield running
        assert hello.stop_all() == {"hello": 0}
    finally:
        if hello is not None:
            hello.stop_all()
        running.stop()


async def shipped_order(system: System) -> str:
    request = request_for(SagaPath.HAPPY, random.randrange(1_000_000), random.Random())
    async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
        orders = order_grpc.OrderServiceStub(channel)
        placed = await orders.PlaceOrder(request)
        final = placed.order
        async for update in orders.WatchOrder(
            order_pb.WatchOrderRequest(order_id=placed.order.order_id), timeout=60
        ):
            final = update.order
    assert final.status == order_pb.ORDER_STATUS_SHIPPED
    return str(final.order_id)


async def greetings_of(system: System, order_id: str) -> list[str]:
    nc = await system.connect()
    try:
        messages = await read_stream(
            nc.jetstream(),
            subjects.stream_name("acme.hello"),
            subjects.saga_filter("acme.hello", order_id),
        )
    finally:
        await nc.close()
    return [m.headers["ce-type"] for m in messages]


def console_saga(port: int, order_id: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/api/sagas/{order_id}"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return str(answer.read().decode())
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def shipped_and_greeted(system: System) -> str:
    order_id = await shipped_order(system)

    async def greeted() -> bool:
        return await greetings_of(system, order_id) == ["acme.hello.v1.CustomerGreeted"]

    await wait_for(greeted, timeout=30, what=f"hello's greeting for {order_id}")
    return order_id


def test_hello_s_event_shows_in_saga_console_and_audit_passes(
    system_with_hello: System, tmp_path: Path
) -> None:
    system = system_with_hello
    order_id = asyncio.run(shipped_and_greeted(system))

    saga = subprocess.run(
        [CHOREO, "saga", order_id, "--nats-url", system.nats_url],
        env=OPERATOR_ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert saga.returncode == 0, saga.stderr
    greeting_lines = [line for line in saga.stdout.splitlines() if "CustomerGreeted" in line]
    assert len(greeting_lines) == 1 and "hello" in greeting_lines[0], saga.stdout

    port = free_port("127.0.0.1")
    console = subprocess.Popen(
        [CHOREO, "console", "--port", str(port), "--nats-url", system.nats_url],
        env=OPERATOR_ENV,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "console.log").open("w"),
    )
    try:
        timeline = json.loads(console_saga(port, order_id))
    finally:
        console.terminate()
        console.wait(timeout=30)
    assert "acme.hello.v1.CustomerGreeted" in json.dumps(timeline)

    audit = subprocess.run(
        [
            CHOREO,
            "audit",
            "--nats-url",
            system.nats_url,
            "--order-address",
            system.addresses["order"],
            "--inventory-address",
            system.addresses["inventory"],
            "--data-dir",
            str(system.config.data_dir),
        ],
        env=OPERATOR_ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "0 violation(s)" in audit.stdout
