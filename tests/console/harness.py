"""What the console's tests share: the whole system as processes, ``choreo console`` as a
process of its own, orders placed over gRPC, and a saga whose step ends in the dead-letter
stream (a message that kills the notification service, given up once the broker has delivered
it more often than the service allows)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
from nats.js.errors import NotFoundError

from choreo import dlq, timeline
from choreo.testing import wait_for
from services.system import System, SystemConfig
from services.workload import SagaPath, request_for
from shop.order.v1 import order_service_pb2 as order_pb
from shop.order.v1 import order_service_pb2_grpc as order_grpc
from tools import faults

POISON_CUSTOMER = "cust-console-poison"
POISON_TYPE = "shop.order.v1.OrderShipped"


@contextlib.contextmanager
def running_system(data_dir: Path) -> Iterator[System]:
    # The fault harness is installed in every service, so a test can arm one (tools/faults.py).
    system = System(
        SystemConfig(data_dir=data_dir, grpc_base_port=None, service_argv=faults.SERVE_ARGV)
    )
    try:
        asyncio.run(system.start())
        yield system
        codes = system.stop()
        assert all(code == 0 for code in codes.values()), f"unclean shutdown: {codes}"
    finally:
        system.stop()


@dataclass
class Console:
    process: subprocess.Popen[str]
    url: str  # http://127.0.0.1:<port>, no trailing slash

    def get(self, path: str) -> tuple[int, Any]:
        """GET ``path``; (status, decoded JSON body)."""
        return self.request("GET", path)

    def post(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return self.request("POST", path, headers)

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            headers=headers or {},
            data=b"" if method == "POST" else None,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


@contextlib.contextmanager
def running_console(system: System) -> Iterator[Console]:
    """``choreo console --port 0`` against the system's broker; its first line names its URL."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "choreo.cli",
            "console",
            "--port",
            "0",
            "--nats-url",
            system.nats_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        line = process.stdout.readline() if ready else ""
        assert line.startswith("choreo console: http://"), (
            f"the console did not start: {line!r} {process.stderr.read() if process.stderr else ''}"
        )
        url = line.split()[2].rstrip("/")
        yield Console(process, url)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, process.stderr.read() if process.stderr else ""


async def place_order(
    system: System, *, customer: str = "cust-console", country: str = "US"
) -> str:
    request = request_for(SagaPath.HAPPY, 0, random.Random(5))
    request.customer_id = customer
    request.shipping_address.country_code = country
    async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
        stub: order_grpc.OrderServiceAsyncStub = order_grpc.OrderServiceStub(channel)
        placed = await stub.PlaceOrder(request, timeout=10)
    return str(placed.order.order_id)


async def get_order(system: System, order_id: str) -> Any:
    async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
        stub: order_grpc.OrderServiceAsyncStub = order_grpc.OrderServiceStub(channel)
        reply = await stub.GetOrder(order_pb.GetOrderRequest(order_id=order_id), timeout=10)
    return reply.order


async def wait_until_done(system: System, order_id: str, timeout: float = 60.0) -> Any:
    """The order once it is final and its customer was told (what WatchOrder waits for)."""

    async def done() -> bool:
        order = await get_order(system, order_id)
        final = (order_pb.ORDER_STATUS_SHIPPED, order_pb.ORDER_STATUS_CANCELLED)
        return bool(order.status in final and order.customer_notified)

    await wait_for(done, timeout=timeout, what=f"order {order_id} final and notified")
    return await get_order(system, order_id)


async def wait_for_events(
    system: System, order_id: str, names: Iterable[str], timeout: float = 30.0
) -> None:
    """Until each of ``names`` (short event names) of the saga is on its stream. A saga that is
    done (final, customer told) may still have answers off that path on their way, e.g.
    InventoryShipped, InventoryReleased or PaymentRefunded."""
    wanted = set(names)
    seen: set[str] = set()
    nc = await nats.connect(system.nats_url)
    try:

        async def landed() -> bool:
            seen.update(step.event_type for step in await timeline.saga_steps(js, order_id))
            return wanted <= seen

        js = nc.jetstream()
        try:
            await wait_for(landed, timeout=timeout, what=f"the events of saga {order_id}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: missing {sorted(wanted - seen)}") from None
    finally:
        await nc.close()


async def _filed(system: System, order_id: str) -> bool:
    nc = await nats.connect(system.nats_url)
    try:
        letters = await dlq.find_dead_letters(
            nc.jetstream(), dlq.LetterFilter(order_id=order_id), check=False
        )
    except NotFoundError:
        return False  # no dead-letter stream yet
    finally:
        await nc.close()
    return bool(letters)


async def dead_letter_a_saga(system: System) -> str:
    """Place an order whose OrderShipped kills the notification service on every delivery.
    The first crash is in a batch; the restarted service handles the redelivered event alone,
    and once such a run has crashed too (one attempt allowed), the next start gives the event
    up without running its handler. Notification has no failure event, so the letter is an
    alarm and the saga waits: shipped, customer not notified. Returns the order id;
    notification runs clean again."""
    assert system.supervisor is not None
    managed = system.supervisor.processes["notification"]
    # A short ack_wait so the broker redelivers quickly after the crash; the service updates
    # its durable consumers' settings when it starts.
    clean = {**managed.spec.env, "CHOREO_ACK_WAIT_S": "2", "CHOREO_MAX_DELIVERIES": "1"}
    managed.spec.env = {
        **clean,
        "CHOREO_CRASH_ON_CUSTOMER": POISON_CUSTOMER,
        "CHOREO_CRASH_ON_TYPE": POISON_TYPE,
    }
    await system.supervisor.restart("notification")
    order_id = await place_order(system, customer=POISON_CUSTOMER)
    deadline = time.monotonic() + 90
    crashes = 0
    while not await _filed(system, order_id):
        assert time.monotonic() < deadline, (
            f"the poisoned OrderShipped was not given up ({crashes} crash(es) of notification)"
        )
        if not managed.alive():  # a child process: polled
            crashes += 1
            assert crashes <= 4, "notification kept crashing without giving the event up"
            with contextlib.suppress(RuntimeError):  # it may crash again while starting
                await system.supervisor.restart("notification")
        await asyncio.sleep(0.1)
    assert crashes >= 1, "the poisoned OrderShipped did not crash notification"
    managed.spec.env = clean
    await system.supervisor.restart("notification")
    return order_id
