"""The production-like topology as real processes: a broker that enforces per-service
permissions, a 3-node JetStream cluster losing a node and then a stream's leader, Postgres with
two replicas of every service. Every saga ends, nothing is lost, no service is restarted."""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest

from choreo import subjects
from choreo.broker import EmbeddedBroker
from services.system import System, SystemConfig
from services.workload import Placed, SagaPath, place_all, wait_until_final
from shop.order.v1 import order_service_pb2 as order_pb
from shop.order.v1 import order_service_pb2_grpc as order_grpc
from tests.e2e import audit_quiet_system
from tests.e2e.test_metrics_e2e import scrape, total
from tests.postgres import drop_databases, unique_base_url

pytestmark = pytest.mark.timeout(300)

EXPECTED = {
    SagaPath.HAPPY: order_pb.ORDER_STATUS_SHIPPED,
    SagaPath.OUT_OF_STOCK: order_pb.ORDER_STATUS_CANCELLED,
    SagaPath.PAYMENT_DECLINED: order_pb.ORDER_STATUS_CANCELLED,
    SagaPath.UNSERVICEABLE: order_pb.ORDER_STATUS_CANCELLED,
}


def mixed(count: int, seed: int) -> list[SagaPath]:
    paths = [SagaPath.HAPPY] * (count * 7 // 10)
    failures = [SagaPath.OUT_OF_STOCK, SagaPath.PAYMENT_DECLINED, SagaPath.UNSERVICEABLE]
    paths += [failures[i % 3] for i in range(count - len(paths))]
    random.Random(seed).shuffle(paths)
    return paths


async def audited(system: System) -> list[str]:
    return [str(v) for v in (await audit_quiet_system(system)).violations]


def assert_final_as_expected(placed: list[Placed], stuck: list[Placed]) -> None:
    assert not stuck, f"{len(stuck)} sagas did not finish, e.g. {stuck[:3]}"
    wrong = [p for p in placed if p.status != EXPECTED[p.path]]
    assert not wrong, f"{len(wrong)} ended in the wrong state, e.g. {wrong[:3]}"


async def test_a_secured_broker_runs_every_saga_and_shuts_out_strangers(tmp_path: Path) -> None:
    system = System(SystemConfig(data_dir=tmp_path / "system", grpc_base_port=None, secure=True))
    await system.start()
    try:
        with pytest.raises(Exception, match=r"(?i)authorization|no servers"):
            await nats.connect(system.nats_url, allow_reconnect=False, max_reconnect_attempts=0)
        async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
            stub = order_grpc.OrderServiceStub(channel)
            placed = await place_all(stub, mixed(60, 5), concurrency=16, seed=5)
            stuck = await wait_until_final(stub, placed, timeout=120)
        assert_final_as_expected(placed, stuck)
        assert await audited(system) == []
        assert system.credentials_file is not None
        assert system.credentials_file.stat().st_mode & 0o777 == 0o600
    finally:
        system.stop()


async def stream_leader(js: Any, stream: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            info = await js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader:
                return str(info.cluster.leader)
        except Exception:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


def node_health(node: EmbeddedBroker) -> str:
    """The node's full /healthz: "ok" once every stream and consumer it holds a replica of is
    current, else the server's reason (a stream or consumer still catching up)."""
    url = f"http://{node.host}:{node.monitor_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
    except OSError as exc:
        return str(exc)
    return "ok" if body.get("status") == "ok" else str(body.get("error") or body)


async def wait_until_current(node: EmbeddedBroker, timeout_s: float = 60.0) -> None:
    """Wait until a node that came back has caught up on every stream and consumer it replicates.
    Killing another node before that leaves one current replica of three for some of them: no
    quorum, and sagas stuck on those streams until the test times out."""
    deadline = time.monotonic() + timeout_s
    while (health := await asyncio.to_thread(node_health, node)) != "ok":
        assert time.monotonic() < deadline, f"the restarted node never caught up: {health}"
        await asyncio.sleep(0.2)


async def test_a_cluster_loses_a_node_then_a_stream_leader_under_load(tmp_path: Path) -> None:
    system = System(
        SystemConfig(
            data_dir=tmp_path / "system",
            grpc_base_port=None,
            secure=True,
            cluster=3,
            store="postgres",
            database_url=unique_base_url("topo"),
            replicas=2,
            # Ten processes share the server's 100 connections with the other tests' databases.
            env={"CHOREO_DATABASE_POOL_SIZE": "4"},
        )
    )
    await system.start()
    assert system.cluster is not None and system.supervisor is not None
    completions: list[float] = []
    nc = await system.connect(max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:

        async def completed(_: Any) -> None:
            completions.append(time.monotonic())

        await nc.subscribe(
            subjects.event_type_filter("shop.notification.v1.NotificationSent"), cb=completed
        )
        js = nc.jetstream(timeout=5)
        async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
            stub = order_grpc.OrderServiceStub(channel)
            placing = asyncio.create_task(
                place_all(stub, mixed(240, 9), concurrency=16, seed=9, rate=16)
            )
            # First a node that does not lead the order stream; it comes back before the
            # stream's leader is killed (two of three down would be no quorum at all).
            await asyncio.sleep(3)
            leader = await stream_leader(js, "SHOP_ORDER")
            follower = next(n for n in ("n1", "n2", "n3") if n != leader)
            system.cluster.node_named(follower).kill()
            await asyncio.sleep(3)
            await asyncio.to_thread(system.cluster.node_named(follower).start)
            await wait_until_current(system.cluster.node_named(follower))
            leader = await stream_leader(js, "SHOP_ORDER")
            killed_at = time.monotonic()
            system.cluster.node_named(leader).kill()
            # One saga placed after the kill, so one surely completes after it even if the
            # load has all been placed (and finished) while the follower caught up.
            probe = await place_all(stub, [SagaPath.HAPPY], concurrency=1, seed=10)
            placed = await placing + probe
            stuck = await wait_until_final(stub, placed, timeout=180)
        assert_final_as_expected(placed, stuck)
        after = [t for t in completions if t > killed_at]
        assert after, "no saga completed after the stream leader was killed"
        recovery_s = after[0] - killed_at
        print(f"stream leader {leader} killed: next saga completed {recovery_s:.2f}s later")
        new_leader = await stream_leader(js, "SHOP_ORDER")
        assert new_leader != leader
        # No service was restarted: every process rode out both losses.
        starts = {name: p.starts for name, p in system.supervisor.processes.items()}
        assert set(starts.values()) == {1}, starts
        assert not system.supervisor.dead()
    finally:
        await nc.close()
    try:
        assert await audited(system) == []
    finally:
        system.stop()
        await drop_databases(system.database_urls.values())


async def test_two_replicas_of_every_service_share_the_work_through_sigkills(
    tmp_path: Path,
) -> None:
    """Competing consumers on Postgres: 300 sagas while the second replica of every service is
    SIGKILLed (and restarted) in turn. Every saga ends, the audit is clean, and every replica
    handled events, counted on its own /metrics."""
    system = System(
        SystemConfig(
            data_dir=tmp_path / "system",
            grpc_base_port=None,
            store="postgres",
            database_url=unique_base_url("topo"),
            replicas=2,
            env={"CHOREO_DATABASE_POOL_SIZE": "4"},
        )
    )
    await system.start()
    assert system.supervisor is not None
    handled: dict[str, float] = dict.fromkeys(system.metrics_addresses, 0.0)

    def count_handled(process: str) -> None:
        samples = scrape(system.metrics_addresses[process])
        handled[process] += total(samples, "choreo_consumer_messages_total", outcome="handled")

    try:
        async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
            stub = order_grpc.OrderServiceStub(channel)
            placing = asyncio.create_task(
                place_all(stub, mixed(300, 13), concurrency=16, seed=13, rate=25)
            )
            kills = 0
            for name in ("inventory", "payment", "shipping", "notification", "order"):
                await asyncio.sleep(1.5)
                replica = f"{name}-2"
                count_handled(replica)  # its counters die with it
                system.supervisor.kill(replica)
                kills += 1
                await asyncio.sleep(0.5)
                await system.supervisor.restart(replica, timeout=60)
            placed = await placing
            stuck = await wait_until_final(stub, placed, timeout=180)
        assert_final_as_expected(placed, stuck)
        assert kills == 5
        assert await audited(system) == []
        for process in system.metrics_addresses:
            count_handled(process)
        print(f"events handled per replica: {handled}")
        assert all(n > 0 for n in handled.values()), handled
    finally:
        system.stop()
        await drop_databases(system.database_urls.values())
