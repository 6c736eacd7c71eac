"""A JetStream cluster of ``nats-server`` processes on loopback: the production-like broker.

``choreo up --cluster 3`` and the cluster tests start one: N nodes with routes to each other,
each with its own file store, so streams can be replicated (R3) and the loss of one node (or
of a stream's leader) is ridden out without restarting a service. Clients get every node's
URL as a comma-separated seed list (``nats://127.0.0.1:p1,nats://127.0.0.1:p2,...``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from choreo.broker import EmbeddedBroker, free_port

CLUSTER_NAME = "choreo"


def seed_urls(url: str) -> list[str]:
    """A comma-separated seed list as the list nats-py wants (one URL stays one URL)."""
    return [part.strip() for part in url.split(",") if part.strip()]


def node_name(index: int) -> str:
    """The server name of the cluster's node at ``index`` (0-based): n1, n2, ..."""
    return f"n{index + 1}"


@dataclass
class EmbeddedCluster:
    """``size`` nodes named ``n1``..``nN`` under ``store_root``; node i keeps ``store_root/ni``."""

    store_root: Path
    size: int = 3
    host: str = "127.0.0.1"
    sync_always: bool = False
    # Extra configuration for every node, e.g. the authorization block of choreo.permissions.
    extra_config: str = ""
    log_dir: Path | None = None
    nodes: list[EmbeddedBroker] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("a cluster needs at least one node")
        route_ports = [free_port(self.host) for _ in range(self.size)]
        for index in range(self.size):
            name = node_name(index)
            routes = ", ".join(
                f"nats-route://{self.host}:{port}"
                for other, port in enumerate(route_ports)
                if other != index
            )
            cluster = (
                f"server_name: {name}\n"
                "cluster {\n"
                f"  name: {CLUSTER_NAME}\n"
                f"  listen: {self.host}:{route_ports[index]}\n"
                f"  routes: [{routes}]\n"
                "}\n"
            )
            self.nodes.append(
                EmbeddedBroker(
                    store_dir=self.store_root / name / "jetstream",
                    host=self.host,
                    sync_always=self.sync_always,
                    log_file=(self.log_dir / f"nats-{name}.log") if self.log_dir else None,
                    extra_config=cluster + self.extra_config,
                )
            )

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def node_named(self, name: str) -> EmbeddedBroker:
        return self.nodes[int(name.removeprefix("n")) - 1]

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, then wait until the cluster has a JetStream meta leader."""
        # Each node waits for its own health check, and a clustered node needs its peers for
        # that: they start side by side, one thread each.
        errors: list[BaseException] = []

        def start(node: EmbeddedBroker) -> None:
            try:
                node.start(timeout)
            except BaseException as exc:  # reported below, after every thread ended
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(node,)) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            self.stop()
            raise errors[0]
        self.wait_for_meta_leader(timeout)

    def meta_leader(self) -> str | None:
        """The name of the JetStream meta leader once every peer is current in its view.

        A leader alone is not enough: until the leader has heard from each peer, placing an
        R3 stream fails with "no suitable peers for placement" (a CI run met exactly that)."""
        for index, node in enumerate(self.nodes):
            if not node.running:
                continue
            url = f"http://{self.host}:{node.monitor_port}/jsz"
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    meta = json.load(response).get("meta_cluster") or {}
            except OSError:
                continue
            leader = meta.get("leader")
            if not leader or leader != node_name(index):
                continue  # only the leader's view of its peers counts
            peers = [peer for peer in meta.get("replicas") or [] if peer.get("name") != leader]
            live_peers = sum(1 for other in self.nodes if other.running) - 1
            if len(peers) >= live_peers and all(peer.get("current") for peer in peers):
                return str(leader)
        return None

    def wait_for_meta_leader(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.meta_leader()
            if leader:
                return leader
            time.sleep(0.1)
        raise TimeoutError(
            f"the {self.size}-node cluster had no meta leader with every peer current in {timeout}s"
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)
