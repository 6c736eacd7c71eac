"""Issue 22, defect 1: a client with unsent data fails over when its broker node goes silent.

Two cluster nodes, each reached only through a fault proxy of its own (and advertised to
clients at the proxy's address, so every path to a node goes through its proxy). The client is
the service runtime's own connection (``choreo.service.connect_nats``), on uvloop like a
service, publishing without pause as the order service does under load. Its node is then
blackholed (the proxy stops forwarding and closes nothing, as an iptables DROP): its socket
fills up and data waits unsent. It must be connected to the other node within the ping
detection time plus 5 s. Before choreo.natsconn, nats-py's reconnect waited for the old socket
to drain first, and made no attempt at all while the node stayed silent.
"""

from __future__ import annotations

import asyncio
import socket
import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from choreo import eventloop, natsconn
from choreo.broker import EmbeddedBroker, free_port
from choreo.cluster import EmbeddedCluster
from choreo.service import connect_nats
from tools.netchaos import FaultProxy

pytestmark = pytest.mark.timeout(150)

PAYLOAD = b"x" * 32 * 1024


def address_of(node: EmbeddedBroker) -> tuple[str, int]:
    return node.host, node.port


def proxied_cluster(tmp_path: Path) -> tuple[EmbeddedCluster, list[FaultProxy]]:
    cluster = EmbeddedCluster(store_root=tmp_path / "cluster", size=2, log_dir=tmp_path)
    proxies = []
    for node in cluster.nodes:
        node.port = free_port(node.host)
        proxy_port = free_port(node.host)
        node.extra_config += f'client_advertise: "127.0.0.1:{proxy_port}"\n'
        proxies.append(FaultProxy(partial(address_of, node), name=node.url, port=proxy_port))
    return cluster, proxies


async def publish_without_pause(nc: Any, stop: asyncio.Event) -> None:
    """As the order service under load: publishes keep coming, whatever the link does."""
    while not stop.is_set():
        try:
            # Bounded: a publish that found nats-py's buffer full waits for a flush that a
            # reconnect may cancel (nats-py then never wakes it).
            await asyncio.wait_for(nc.publish("load.orders", PAYLOAD), 1.0)
        except Exception:  # the buffer is full, or the wait above ran out: go on
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)


def unsent_bytes(nc: Any) -> int:
    """What the client's socket transport still holds unsent (nats-py's own buffer aside)."""
    writer = nc._transport._io_writer
    return int(writer.transport.get_write_buffer_size()) if writer is not None else 0


async def fail_over(proxies: list[FaultProxy]) -> tuple[float, int]:
    for proxy in proxies:
        await proxy.start()
    nc = await connect_nats(",".join(p.url for p in proxies), "order", wait_s=10)
    assert isinstance(nc._transport, natsconn.BoundedCloseTransport)
    stop = asyncio.Event()
    load = asyncio.create_task(publish_without_pause(nc, stop))
    try:
        await asyncio.sleep(1.0)
        assert nc.is_connected
        isolated = next(p for p in proxies if p.port == nc.connected_url.port)
        healthy = next(p for p in proxies if p is not isolated)
        isolated.blackhole()
        isolated_at = time.monotonic()
        bound_s = natsconn.user_timeout_s() + 5
        unsent = 0
        while time.monotonic() - isolated_at < bound_s + 10:
            if nc.is_connected and nc.connected_url.port == healthy.port:
                break
            if nc.is_connected:  # still on the silent node: what waits in its socket
                unsent = max(unsent, unsent_bytes(nc))
            await asyncio.sleep(0.1)
        took = time.monotonic() - isolated_at
        stop.set()
        await asyncio.wait_for(load, 5)
        if nc.is_connected and nc.connected_url.port == healthy.port:
            await asyncio.wait_for(nc.flush(), 5)  # the new connection carries traffic
        return took, unsent
    finally:
        stop.set()
        load.cancel()
        for proxy in proxies:
            proxy.heal()
        # Bounded: without the fix, nats-py's close waits on the stuck socket as well.
        closing = asyncio.ensure_future(nc.close())
        await asyncio.wait({closing}, timeout=10)
        if not closing.done():
            closing.cancel()
        for proxy in proxies:
            await proxy.stop()


def test_a_publisher_with_unsent_data_fails_over_from_a_silent_node(tmp_path: Path) -> None:
    cluster, proxies = proxied_cluster(tmp_path)
    cluster.start()
    try:
        took, unsent = eventloop.run(fail_over(proxies))
    finally:
        cluster.stop()
    bound_s = natsconn.user_timeout_s() + 5
    print(
        f"isolated with {unsent} bytes unsent in the socket: on the healthy node after {took:.1f}s"
    )
    assert unsent > 0, "the test must isolate the client while it has unsent data"
    assert took <= bound_s, f"failed over after {took:.1f}s, more than {bound_s:.0f}s"


async def close_into_a_blackhole(upstream: tuple[str, int]) -> tuple[int, int, float, int]:
    proxy = FaultProxy(lambda: upstream)
    await proxy.start()
    transport = natsconn.BoundedCloseTransport(close_grace_s=1.0, user_timeout=20.0)
    try:
        await transport.connect(urlparse(proxy.url), 32768, 2)
        writer = transport._io_writer
        assert writer is not None
        sock = writer.get_extra_info("socket")
        user_timeout_ms = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
        proxy.blackhole()
        transport.write(b"x" * 16 * 1024 * 1024)  # more than any socket buffer holds
        await asyncio.sleep(0.2)
        unsent = writer.transport.get_write_buffer_size()
        closing_at = time.monotonic()
        transport.close()
        await transport.wait_closed()
        return user_timeout_ms, unsent, time.monotonic() - closing_at, transport.aborted
    finally:
        proxy.heal()
        await proxy.stop()


def test_the_socket_has_a_user_timeout_and_its_close_never_waits_on_unsent_data(
    broker: EmbeddedBroker,
) -> None:
    user_timeout_ms, unsent, took, aborted = eventloop.run(
        close_into_a_blackhole((broker.host, broker.port))
    )
    assert user_timeout_ms == 20_000
    assert unsent > 0
    assert took < 3.0 and aborted == 1, (took, aborted)
