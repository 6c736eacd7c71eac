"""A 3-node JetStream cluster of real nats-server processes: R3 streams survive the loss of a
node and of a stream's leader, and the client moves to the surviving nodes on its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from nats.js import api

from choreo import subjects
from choreo.cluster import EmbeddedCluster, seed_urls
from choreo.settings import RuntimeSettings
from choreo.streams import context_stream_config
from choreo.testing import envelope_for
from tests.testkit import desk_events

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("testkit_contracts")]
T = TypeVar("T")


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[EmbeddedCluster]:
    cluster = EmbeddedCluster(store_root=tmp_path / "cluster", size=3)
    await cluster.astart()
    try:
        yield cluster
    finally:
        await cluster.astop()


def test_a_seed_list_is_split_for_the_client() -> None:
    assert seed_urls("nats://a:1, nats://b:2,") == ["nats://a:1", "nats://b:2"]
    assert seed_urls("nats://a:1") == ["nats://a:1"]


async def publish_until_stored(js: Any, index: int, timeout_s: float = 30.0) -> None:
    """Publish like the relay does: the same Nats-Msg-Id again until the cluster acks it."""
    opened = desk_events.TicketOpened(ticket_id=f"o-{index}")
    envelope = envelope_for(opened, aggregate_id=f"o-{index}", correlation_id=f"o-{index}")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await js.publish(
                envelope.subject, opened.SerializeToString(), headers=envelope.to_headers()
            )
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            # Without a stream leader the answer can be an immediate "no responders": without a
            # pause this loop spins on the CPU the surviving nodes need to elect a new leader,
            # in the very time the test measures.
            await asyncio.sleep(0.05)


async def patiently(call: Callable[[], Awaitable[T]], timeout_s: float = 30.0) -> T:
    """A JetStream API call retried while the cluster elects a new (meta or stream) leader,
    as the runtime's own start-up does."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def stream_leader(js: Any) -> str:
    info = await patiently(lambda: js.stream_info(subjects.stream_name("testkit.desk")))
    assert info.cluster is not None and info.cluster.leader
    return str(info.cluster.leader)


async def wait_for_caught_up_replicas(js: Any, timeout_s: float = 30.0) -> None:
    """Wait until both followers of the ticket stream are current. Killing the leader while the
    node that just came back still catches up leaves one current replica of three: no quorum,
    no new leader, and the test would measure the restart rather than the election."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = await patiently(lambda: js.stream_info(subjects.stream_name("testkit.desk")))
        replicas = (info.cluster.replicas or []) if info.cluster else []
        if len(replicas) == 2 and all(r.current and not r.offline and not r.lag for r in replicas):
            return
        assert time.monotonic() < deadline, f"replicas never caught up: {replicas}"
        await asyncio.sleep(0.2)


async def test_r3_streams_survive_a_node_loss_and_a_leader_change(
    cluster: EmbeddedCluster,
) -> None:
    nc = await nats.connect(
        seed_urls(cluster.url), max_reconnect_attempts=-1, reconnect_time_wait=0.1
    )
    try:
        js = nc.jetstream(timeout=2.0)
        settings = RuntimeSettings(stream_replicas=3)
        await patiently(lambda: js.add_stream(context_stream_config("testkit.desk", settings)))
        for index in range(50):
            await publish_until_stored(js, index)

        # Kill a node that does not lead the stream, then the stream's leader.
        info = await patiently(lambda: js.stream_info(subjects.stream_name("testkit.desk")))
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2
        leader = str(info.cluster.leader)
        follower = next(n for n in ("n1", "n2", "n3") if n != leader)
        cluster.node_named(follower).kill()
        for index in range(50, 75):
            await publish_until_stored(js, index)
        cluster.node_named(follower).start()
        await wait_for_caught_up_replicas(js)

        leader = await stream_leader(js)
        killed_at = time.monotonic()
        cluster.node_named(leader).kill()
        await publish_until_stored(js, 75)
        recovery_s = time.monotonic() - killed_at
        for index in range(76, 100):
            await publish_until_stored(js, index)

        new_leader = await stream_leader(js)
        assert new_leader and new_leader != leader
        print(f"stream leader {leader} killed: next publish stored after {recovery_s:.2f}s")
        assert recovery_s < 20

        # Nothing lost, nothing doubled: a durable reads each ticket exactly once.
        check = api.ConsumerConfig(durable_name="check", ack_policy=api.AckPolicy.EXPLICIT)
        await patiently(lambda: js.add_consumer("TESTKIT_DESK", check))
        sub = await js.pull_subscribe_bind(durable="check", stream="TESTKIT_DESK")
        seen: list[str] = []
        while len(seen) < 100:
            # The new consumer elects its own leader first: fetch as patiently as the runtime.
            for msg in await patiently(lambda: sub.fetch(100, timeout=2)):
                seen.append((msg.headers or {})["ce-subject"])
                await msg.ack()
        assert sorted(seen) == sorted(f"o-{i}" for i in range(100))
        assert (await patiently(lambda: js.stream_info("TESTKIT_DESK"))).state.messages == 100
    finally:
        await nc.close()
