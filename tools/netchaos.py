"""``choreo chaos --network``: faults of the network between each service and its broker.

Each service reaches the broker through a :class:`FaultProxy` of its own, a small asyncio TCP
proxy in this process, which the run tells to:

- **blackhole** a direction (or both): stop forwarding without closing anything, as an
  iptables DROP does: what is sent stays in the sender's socket buffers, TCP backpressure
  builds, new connections are accepted but not forwarded (the client's connect times out
  waiting for the broker's INFO);
- **drop** a direction: read and discard, so the sender sees its bytes taken (a link that
  loses what it acknowledged); a connection that lost bytes is reset when the drop ends, since
  its byte stream is broken;
- **reset** every connection (RST), and refuse new ones with a reset while the fault lasts.

While mixed orders flow (the workload of ``choreo chaos``), a seeded schedule injects, per
service: a cut from the broker (both directions blackholed; the order service, the busiest
publisher, is always among them), a silent connection (the broker's side goes quiet, the
service's still gets through), an asymmetric partition (the service's side goes nowhere, the
broker's still arrives), a dropped link, publish acknowledgements lost (the broker's side of
the order service's link discarded for a moment while it publishes: the broker stored the
messages, the acks never arrive, the outbox publishes them again inside the dedup window),
connections reset, a flapping link, and a partition of the order service longer than the saga
deadline.

With a JetStream cluster (``cluster=3``, ``choreo chaos --network --network-cluster 3``), each
service has a proxy per node and gets them all as its seed list; every route between two nodes
goes through the accepting node's route proxy (each node advertises its route proxy to its
peers, and ``no_advertise`` keeps the nodes' own client URLs from the clients, so nothing finds
a way around the proxies). Two more faults then: a service cut from the node it uses (it must
fail over to a healthy node), and a node isolated: every link to it, the services', the
operator's and the routes both ways (a route's initiator is told by the ``server_name`` of the
INFO it sends). The isolated node is the one the order service uses.

Then the checks of ``choreo chaos`` (every saga ends, invariants 1-6, the dead letters, the saga
time bound), and per fault: the time from its end to the service being SERVING again (its gRPC
health, which is NOT_SERVING while its broker connection is down), from its start to the
service SERVING through a healthy node (a node cut or isolated), and from its end to the first
saga completed after it. All of it must be within :func:`recovery_bound_s`. The run reuses
:class:`tools.chaos.Chaos` for the workload, the audit and the report; only the faults are
new. It runs on SQLite files or, with ``store="postgres"``, on fresh Postgres databases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import logging
import random
import re
import socket
import statistics
import struct
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console

from choreo import contracts, natsconn, subjects
from choreo.cluster import EmbeddedCluster, node_name
from choreo.errors import ConfigurationError
from choreo.redact import redact_url
from choreo.streamread import read_stream
from choreo.supervisor import ProcessSpec
from services.registry import SERVICE_NAMES
from services.system import System, SystemConfig
from services.workload import Placed, mixed_paths, request_for
from shop.order.v1 import order_service_pb2_grpc as order_grpc
from tools.chaos import Chaos, ChaosConfig, ChaosReport, run_to_report

log = logging.getLogger(__name__)

UP = "to_broker"  # service -> broker
DOWN = "to_service"  # broker -> service
DIRECTIONS = (UP, DOWN)
CHUNK = 64 * 1024
SNIFF_BYTES = 16 * 1024
_SERVER_NAME = re.compile(rb'"server_name":"([^"]+)"')


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    """One proxied connection: the service's side and the broker's."""

    number: int
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    lost_bytes: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # A route's initiating node (its server_name, read from what it sends), on route proxies.
    peer: str | None = None
    sniffed: bytes = b""
    # Cleared while this link alone is blackholed (its peer node is isolated).
    open: asyncio.Event = field(default_factory=asyncio.Event)
    target: tuple[str, int] | None = None

    def __post_init__(self) -> None:
        self.open.set()

    def close(self, reset: bool = False) -> None:
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if reset:
                _reset(writer)
            else:
                writer.close()
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()


class FaultProxy:
    """A TCP proxy on loopback that forwards to ``upstream`` until told otherwise."""

    def __init__(
        self,
        upstream: Callable[[], tuple[str, int]],
        *,
        name: str = "",
        host: str = "127.0.0.1",
        port: int = 0,
        sniff_peers: bool = False,
    ) -> None:
        self.name = name
        self.sniff_peers = sniff_peers
        # Route initiators (server names) whose links are held while they are isolated.
        self._blocked_peers: set[str] = set()
        self.host = host
        self.port = port
        self._upstream = upstream
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._numbers = itertools.count(1)
        # Set while a direction forwards; cleared while it is blackholed.
        self._flowing = {direction: asyncio.Event() for direction in DIRECTIONS}
        for event in self._flowing.values():
            event.set()
        self._dropping = dict.fromkeys(DIRECTIONS, False)
        self._refusing = False
        self.accepted = 0
        self.bytes_dropped = 0

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close()
        self._links.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    # --- faults ---------------------------------------------------------------------------

    def blackhole(self, *directions: str) -> None:
        """Stop forwarding (both directions unless named), holding every connection open."""
        for direction in directions or DIRECTIONS:
            self._flowing[direction].clear()

    def drop(self, *directions: str) -> None:
        """Read and discard (both directions unless named)."""
        for direction in directions or DIRECTIONS:
            self._dropping[direction] = True

    def reset(self, refuse: bool = True) -> None:
        """Reset every connection now; with ``refuse``, reset new ones until :meth:`heal`."""
        self._refusing = refuse
        for link in list(self._links):
            link.close(reset=True)
        self._links.clear()

    def block_peer(self, peer: str) -> None:
        """Blackhole, both ways, the route links that ``peer`` (a node's server name) opened
        through this proxy, now and as they come, until :meth:`heal`."""
        self._blocked_peers.add(peer)
        for link in self._links:
            if link.peer == peer:
                link.open.clear()

    def route_links(self, peer: str | None = None) -> int:
        """Forwarded links opened by ``peer`` (any, if None), as far as they named it."""
        return sum(
            1
            for link in self._links
            if link.upstream is not None and (peer is None or link.peer == peer)
        )

    def connected(self, to: tuple[str, int] | None = None) -> int:
        """How many connections are forwarded to the upstream (to ``to``, if given)."""
        return sum(
            1
            for link in self._links
            if link.upstream is not None and (to is None or link.target == to)
        )

    def heal(self) -> None:
        self._refusing = False
        self._dropping = dict.fromkeys(DIRECTIONS, False)
        self._blocked_peers.clear()
        for link in self._links:
            link.open.set()
        for link in list(self._links):
            if link.lost_bytes:  # its byte stream has a hole: nothing can resume on it
                link.close(reset=True)
                self._links.discard(link)
        for event in self._flowing.values():
            event.set()

    @property
    def faulty(self) -> bool:
        return (
            self._refusing
            or any(self._dropping.values())
            or not all(event.is_set() for event in self._flowing.values())
        )

    # --- forwarding -----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refusing:
            _reset(writer)
            return
        link = _Link(next(self._numbers), writer)
        self._links.add(link)
        try:
            # A blackholed link answers no SYN: nothing reaches the broker until it heals.
            await self._flowing[UP].wait()
            await self._flowing[DOWN].wait()
            if link not in self._links:  # reset while it waited
                return
            link.target = host, port = self._upstream()
            up_reader, link.upstream = await asyncio.open_connection(host, port)
        except (OSError, asyncio.CancelledError):
            link.close(reset=True)
            self._links.discard(link)
            return
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, link.upstream, UP)),
            asyncio.create_task(self._pump(link, up_reader, writer, DOWN)),
        ]

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        try:
            while True:
                await self._gate(link, direction)  # blackholed: read nothing, backpressure builds
                data = await reader.read(CHUNK)
                if not data:
                    break
                if direction == UP and self.sniff_peers and link.peer is None:
                    self._sniff(link, data)
                if self._dropping[direction]:
                    link.lost_bytes = True
                    self.bytes_dropped += len(data)
                    continue
                await self._gate(link, direction)  # what was read as the blackhole began is held
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return
        link.close()
        self._links.discard(link)

    async def _gate(self, link: _Link, direction: str) -> None:
        flowing = self._flowing[direction]
        while not (flowing.is_set() and link.open.is_set()):
            await (flowing.wait() if not flowing.is_set() else link.open.wait())

    def _sniff(self, link: _Link, data: bytes) -> None:
        """A route's initiator says its server name in the INFO it sends after CONNECT."""
        link.sniffed = (link.sniffed + data)[:SNIFF_BYTES]
        found = _SERVER_NAME.search(link.sniffed)
        if found:
            link.peer = found.group(1).decode()
            link.sniffed = b""
            if link.peer in self._blocked_peers:
                link.open.clear()
        elif len(link.sniffed) >= SNIFF_BYTES:
            link.peer = "?"  # not a route, or not one that names itself: never blocked


# --- the run ------------------------------------------------------------------------------

# The faults of one service's links (to every node it may use), and with a cluster those of a
# node: a service cut from the node it uses (it must fail over), a node isolated (every link to
# it: the services', the other nodes' routes, the operator's).
SERVICE_KINDS = (
    "cut",
    "silent",
    "asymmetric",
    "drop",
    "ack_lost",
    "ack_lost_late",
    "reset",
    "flap",
    "long_partition",
)
CLUSTER_KINDS = ("node_cut", "node_isolated")
# Postgres: a service's link to its database, reset in the middle of transactions (and new
# connections refused a moment), or blackholed (transactions stall, then go on).
DATABASE_KINDS = ("db_reset", "db_cut")
FAILOVER_KINDS = CLUSTER_KINDS  # recovery is measured from the fault's start: failing over
KINDS = SERVICE_KINDS  # a single broker's
LATE_WINDOW_S = 15.0  # the longest duplicate window with which acks are lost past it
FLAP_PERIOD_S = 2.0  # the link flaps down for this, up for this, again and again
GAP_S = 4.0  # between two faults of one service, once it is SERVING again


def recovery_bound_s() -> float:
    """The documented bound on a service's time to recover after a fault ends, and on its
    failover to a healthy node from the start of a cut: the ping detection time
    (``choreo.natsconn``) plus 5 s."""
    return natsconn.user_timeout_s() + 5.0


@dataclass
class NetworkChaosConfig:
    sagas: int = 60  # placed by the chaos workload before and while the faults begin
    concurrency: int = 8
    seed: int = 7
    # Orders per second placed while any fault lasts (mixed paths, like the workload).
    trickle_per_s: float = 2.0
    # A cut outlasts the ping detection time (the connection is given up) but not the saga
    # deadline; the long partition outlasts the deadline.
    saga_deadline_s: float = 30.0
    cut_s: float = 24.0
    silent_s: float = 22.0
    asymmetric_s: float = 22.0  # the service's side blackholed, the broker's gets through
    drop_s: float = 6.0
    # Broker -> service bytes discarded while the order service publishes: acks of messages
    # the broker stored are lost; the outbox publishes them again (deduplicated).
    ack_lost_s: float = 1.5
    # The stream's duplicate window. A short one (at most LATE_WINDOW_S) adds ack_lost_late:
    # the acks lost for longer than the window, so the outbox's next publish is stored again
    # and the consumers' inbox must keep its effects single.
    duplicate_window_s: float = 120.0
    reset_s: float = 3.0  # new connections refused (reset) this long
    flap_s: float = 16.0
    # With a cluster: a service cut from its node for this long (it must fail over within the
    # bound), and a node isolated for this long.
    node_cut_s: float = 30.0
    node_isolation_s: float = 40.0
    db_reset_s: float = 3.0
    db_cut_s: float = 8.0
    node_isolations: int = 2  # the order service's node, then the order stream's leader
    # Partitions of the order service longer than the saga deadline (0: none).
    long_partitions: int = 1
    # The kinds of the first round (None: every kind the broker set-up allows).
    kinds: tuple[str, ...] | None = None
    # Faults beyond the first round of one of each kind: more of them, on random services.
    extra_faults: int = 0
    duration_s: float = 150.0  # how long sagas may take to end once the faults are over
    store: str = "sqlite"
    database_url: str = ""
    cluster: int = 1  # broker nodes: 1, or a JetStream cluster (3)

    @property
    def long_partition_s(self) -> float:
        """The order service cut for longer than the saga deadline."""
        return self.saga_deadline_s + 10.0

    @property
    def ack_lost_late_s(self) -> float:
        """Past the duplicate window and the outbox's publish timeout (5 s) and sweep."""
        return self.duplicate_window_s + 8.0

    @property
    def first_round(self) -> tuple[str, ...]:
        allowed = tuple(
            kind
            for kind in SERVICE_KINDS
            + (CLUSTER_KINDS if self.cluster > 1 else ())
            + (DATABASE_KINDS if self.store == "postgres" else ())
            if kind != "ack_lost_late" or self.duplicate_window_s <= LATE_WINDOW_S
        )
        if self.kinds is None:
            return allowed
        unknown = set(self.kinds) - set(allowed)
        if unknown:
            raise ConfigurationError(
                f"network fault kinds {sorted(unknown)} are not known here (known: {allowed};"
                " node_cut and node_isolated need a cluster, db_* Postgres,"
                " ack_lost_late a duplicate window"
                f" of at most {LATE_WINDOW_S:.0f}s)"
            )
        return self.kinds


@dataclass
class FaultRecord:
    kind: str
    service: str
    started: float  # seconds since the run's faults began
    lasted_s: float
    node: str = ""  # the node cut or isolated (cluster kinds)
    # The service used that node when the fault began, so it had to fail over (cluster kinds).
    affected: bool = True
    # Fault start -> the service said NOT_SERVING (None: it never did, the fault was short).
    detected_s: float | None = None
    # Fault start -> SERVING through a healthy node while the fault still lasts (cluster kinds).
    failover_s: float | None = None
    # Fault end -> the service SERVING again (None: not within the bound's double).
    recovered_s: float | None = None
    # Fault end -> the first saga completed after it.
    first_saga_s: float | None = None
    # Bytes discarded by the fault (drop, ack_lost): the publish acks among them.
    bytes_lost: int = 0
    # A node isolation: the route links between the node and its peers that it held, and
    # the leader of the order stream when it began.
    routes_cut: int = 0
    order_stream_leader: str = ""

    def line(self) -> str:
        def show(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}s"

        where = f"{self.service}@{self.node}" if self.node else self.service
        if self.routes_cut:
            where += f" ({self.routes_cut} routes, order stream leader {self.order_stream_leader})"
        failover = (
            f"  failed over {show(self.failover_s):>6} after the start"
            if self.kind in FAILOVER_KINDS and self.affected
            else ""
        )
        return (
            f"t+{self.started:6.1f}s {self.kind:15} {where:16} {self.lasted_s:5.1f}s"
            f"  NOT_SERVING after {show(self.detected_s):>6}{failover}"
            f"  SERVING {show(self.recovered_s):>6} after the end"
            f"  first saga done {show(self.first_saga_s):>6} after"
        )


def _stats(values: list[float | None]) -> dict[str, Any]:
    known = [v for v in values if v is not None]
    return {
        "count": len(values),
        "unknown": len(values) - len(known),
        "max": max(known) if known else None,
        "median": round(statistics.median(known), 2) if known else None,
    }


class ProxiedSystem(System):
    """The reference system, each service reaching each broker node through a fault proxy of
    its own, the operator's tools through one more; with a cluster, every route between two
    nodes goes through the accepting node's route proxy (each node advertises its proxy to
    its peers, and no client URLs to clients, so nothing learns a way around the proxies)."""

    def __init__(
        self,
        config: SystemConfig,
        proxies: Mapping[str, Mapping[str, FaultProxy]],
        tool: FaultProxy,
        routes: Mapping[str, FaultProxy],
        databases: Mapping[str, FaultProxy],
    ) -> None:
        super().__init__(config)
        self.db_proxies = databases
        self.proxies = proxies
        self.tool_proxy = tool
        self.route_proxies = routes
        self.route_targets: dict[str, tuple[str, int]] = {}

    @property
    def nats_url(self) -> str:
        """What the run's own connection uses (one URL: ``Chaos`` passes it to nats-py as is):
        a proxy to a node that is not isolated."""
        return self.tool_proxy.url

    def node_address(self, node: str) -> tuple[str, int]:
        if self.cluster is not None:
            broker = self.cluster.node_named(node)
        else:
            assert self.broker is not None, "the broker is not started"
            broker = self.broker
        return broker.host, broker.port

    def _spec(
        self, name: str, process: str, port: int, databases: Mapping[str, str], data: Path
    ) -> ProcessSpec:
        spec = super()._spec(name, process, port, databases, data)
        spec.env["CHOREO_NATS_URL"] = ",".join(p.url for p in self.proxies[name].values())
        if name in self.db_proxies:  # Postgres: through the service's database proxy
            parts = urlsplit(databases[name])
            proxy = self.db_proxies[name]
            userinfo = parts.netloc.rpartition("@")[0]
            netloc = f"{userinfo}@" if userinfo else ""
            spec.env["CHOREO_DATABASE_URL"] = urlunsplit(
                parts._replace(netloc=f"{netloc}{proxy.host}:{proxy.port}")
            )
        return spec

    def _start_broker(self) -> None:
        if self.config.cluster == 1:
            super()._start_broker()
            return
        if self.config.secure:
            raise ConfigurationError("chaos --network with a cluster runs without --secure")
        data = self.config.data_dir
        self.cluster = EmbeddedCluster(
            store_root=data / "cluster",
            size=self.config.cluster,
            sync_always=self.config.sync_always,
            log_dir=data / "logs",
        )
        for index, node in enumerate(self.cluster.nodes):
            node.extra_config = self._through_proxies(node_name(index), node.extra_config)
        self.cluster.start()

    def _through_proxies(self, name: str, config: str) -> str:
        """A node's cluster block with its routes to the others' route proxies, its own route
        proxy advertised to its peers, and no client URLs advertised to clients."""
        listen = re.search(r"^\s*listen: (\S+):(\d+)$", config, re.MULTILINE)
        assert listen is not None, config
        self.route_targets[name] = (listen.group(1), int(listen.group(2)))
        routes = ", ".join(
            f"nats-route://{proxy.host}:{proxy.port}"
            for other, proxy in self.route_proxies.items()
            if other != name
        )
        own = self.route_proxies[name]
        config = re.sub(r"^(\s*)routes: \[.*\]$", rf"\1routes: [{routes}]", config, flags=re.M)
        return config.replace(
            listen.group(0),
            f"{listen.group(0)}\n  advertise: {own.host}:{own.port}\n  no_advertise: true",
        )


class NetworkChaos(Chaos):
    """``choreo chaos`` with network faults instead of process faults (see the module doc)."""

    def __init__(self, config: NetworkChaosConfig, console: Console) -> None:
        chaos_config = ChaosConfig(
            sagas=config.sagas,
            concurrency=config.concurrency,
            seed=config.seed,
            saga_deadline_s=config.saga_deadline_s,
            duration_s=config.duration_s,
            duplicate_window_s=config.duplicate_window_s,
            store=config.store,
            # No process faults: the network's are the subject (schedule() is replaced).
            kills=0,
            broker_restarts=0,
            broker_pauses=0,
            duplicates=0,
            poison=0,
            provider_outages=0,
            hung_providers=0,
            crash_messages=0,
            long_broker_outages=0,
            schema_migrations=0,
            key_rotations=0,
        )
        if config.database_url:
            chaos_config.database_url = config.database_url
        super().__init__(chaos_config, console)
        self.net = config
        config.first_round  # unknown kinds: said now  # noqa: B018
        self.nodes = [node_name(index) for index in range(config.cluster)]
        self.proxies = {
            service: {
                node: FaultProxy(functools.partial(self._node_address, node), name=service)
                for node in self.nodes
            }
            for service in SERVICE_NAMES
        }
        self.tool_proxy = FaultProxy(self._tool_address, name="chaos")
        self.route_proxies = (
            {
                node: FaultProxy(
                    functools.partial(self._route_address, node),
                    name=f"route-{node}",
                    sniff_peers=True,
                )
                for node in self.nodes
            }
            if config.cluster > 1
            else {}
        )
        system_config = self.system.config
        system_config.cluster = config.cluster
        database = urlsplit(system_config.database_url)
        self.db_proxies = (
            {
                service: FaultProxy(
                    functools.partial(_address, database.hostname or "127.0.0.1", database.port),
                    name=f"{service}-db",
                )
                for service in SERVICE_NAMES
            }
            if config.store == "postgres"
            else {}
        )
        self.system: ProxiedSystem = ProxiedSystem(
            system_config, self.proxies, self.tool_proxy, self.route_proxies, self.db_proxies
        )
        self.fault_log: list[FaultRecord] = []
        self._fault_ends: list[tuple[FaultRecord, float]] = []
        self._began = 0.0
        self.orders_refused = 0
        self.isolated: set[str] = set()
        # Per stream: events stored more than once (the same Nats-Msg-Id, re-sent after the
        # duplicate window): the inbox had to keep their effects single.
        self.stored_twice: dict[str, int] = {}
        # A node isolation runs alone: lanes hold their next fault while it waits and lasts.
        self._turn = asyncio.Condition()
        self._active = 0
        self._exclusive = False

    def _node_address(self, node: str) -> tuple[str, int]:
        return self.system.node_address(node)

    def _route_address(self, node: str) -> tuple[str, int]:
        return self.system.route_targets[node]

    def _tool_address(self) -> tuple[str, int]:
        healthy = [node for node in self.nodes if node not in self.isolated] or self.nodes
        return self._node_address(healthy[0])

    def all_proxies(self) -> list[FaultProxy]:
        return [
            *(p for group in self.proxies.values() for p in group.values()),
            self.tool_proxy,
            *self.route_proxies.values(),
            *self.db_proxies.values(),
        ]

    def current_node(self, service: str) -> str | None:
        """The node the service's connection goes to now (None: it has none)."""
        for node, proxy in self.proxies[service].items():
            if proxy.connected():
                return node
        return None

    def connected_elsewhere(self, service: str, away_from: str) -> bool:
        return any(
            proxy.connected() and node != away_from and node not in self.isolated
            for node, proxy in self.proxies[service].items()
        )

    # --- the plan -------------------------------------------------------------------------

    def plan(self) -> dict[str, list[str]]:
        """Each service's faults, in order: one of each kind first (the order service cut
        under load, its acks lost, cut from its node, and cut for longer than the saga
        deadline), then the extras. Node isolations run in a lane of their own."""
        first = self.net.first_round
        others = [name for name in SERVICE_NAMES if name != "order"]
        shuffled = self.rng.sample(others, len(others))
        lanes: dict[str, list[str]] = {name: [] for name in SERVICE_NAMES}
        for kind in ("cut", "ack_lost", "ack_lost_late", "node_cut"):
            if kind in first:
                lanes["order"].append(kind)
        if "long_partition" in first:
            lanes["order"] += ["long_partition"] * self.net.long_partitions
        spread = [k for k in ("silent", "asymmetric", "drop", "reset", "flap") if k in first]
        for index, kind in enumerate(spread):
            lanes[shuffled[index % len(shuffled)]].append(kind)
        # Not the order service's database: a reset there fails PlaceOrder with UNKNOWN
        # (not UNAVAILABLE), which the workload does not retry (see docs/chaos-network.md).
        for kind in ("cut", "node_cut", *DATABASE_KINDS):
            if kind in first:
                lanes[self.rng.choice(others)].append(kind)
        pool = [
            k
            for k in first
            if k
            not in ("long_partition", "node_isolated", "ack_lost", "ack_lost_late", *DATABASE_KINDS)
        ]
        for _ in range(self.net.extra_faults):
            kind = self.rng.choice(pool)
            lanes[self.rng.choice(SERVICE_NAMES)].append(kind)
        return {name: kinds for name, kinds in lanes.items() if kinds}

    def duration_of(self, kind: str) -> float:
        n = self.net
        return {
            "cut": n.cut_s,
            "silent": n.silent_s,
            "asymmetric": n.asymmetric_s,
            "drop": n.drop_s,
            "ack_lost": n.ack_lost_s,
            "ack_lost_late": n.ack_lost_late_s,
            "reset": n.reset_s,
            "flap": n.flap_s,
            "node_cut": n.node_cut_s,
            "node_isolated": n.node_isolation_s,
            "db_reset": n.db_reset_s,
            "db_cut": n.db_cut_s,
            "long_partition": n.long_partition_s,
        }[kind]

    # --- injecting ------------------------------------------------------------------------

    async def inject(
        self, js: Any, stub: order_grpc.OrderServiceAsyncStub, spread_s: float
    ) -> None:
        self._began = time.monotonic()
        stop = asyncio.Event()
        trickle = asyncio.create_task(self.trickle(stub, stop))
        lanes = self.plan()
        isolations = (
            self.net.node_isolations
            if "node_isolated" in self.net.first_round and self.net.cluster > 1
            else 0
        )
        try:
            await asyncio.gather(
                *(
                    self.lane(name, kinds, first_at=1.0 + 2.0 * index)
                    for index, (name, kinds) in enumerate(lanes.items())
                ),
                self.isolation_lane(isolations, first_at=12.0),
            )
        finally:
            stop.set()
            await trickle

    async def lane(self, service: str, kinds: list[str], first_at: float) -> None:
        """One service's faults, one after the other, each once the last has healed."""
        await asyncio.sleep(first_at)
        for kind in kinds:
            async with self._turn:
                await self._turn.wait_for(lambda: not self._exclusive)
                self._active += 1
            try:
                await self.one_fault(kind, service)
            finally:
                async with self._turn:
                    self._active -= 1
                    self._turn.notify_all()
            await asyncio.sleep(GAP_S)

    async def isolation_lane(self, count: int, first_at: float) -> None:
        """Node isolations, each alone (the lanes' faults done, the next ones held)."""
        await asyncio.sleep(first_at)
        for index in range(count):
            async with self._turn:
                self._exclusive = True
                await self._turn.wait_for(lambda: self._active == 0)
            try:
                await asyncio.sleep(GAP_S)  # every service SERVING, orders flowing
                # The order service's node first, then the order stream's leader (alone: a
                # minority), and so on.
                await self.isolate_node(leader=index % 2 == 1)
            finally:
                async with self._turn:
                    self._exclusive = False
                    self._turn.notify_all()
            await asyncio.sleep(GAP_S * 4)

    async def one_fault(self, kind: str, service: str) -> None:
        proxies = list(self.proxies[service].values())
        lasted = self.duration_of(kind)
        started = time.monotonic()
        record = FaultRecord(kind, service, started - self._began, lasted)
        ended: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        away_from = ""
        if kind == "node_cut":
            # The node the service uses now: only that link is cut; it must fail over.
            away_from = record.node = self.current_node(service) or self.nodes[0]
            proxies = [self.proxies[service][away_from]]
        elif kind in DATABASE_KINDS:
            proxies = [self.db_proxies[service]]
        following = asyncio.create_task(
            self.follow_health(service, record, started, ended, away_from)
        )
        dropped_before = sum(proxy.bytes_dropped for proxy in proxies)
        try:
            if kind in ("cut", "long_partition", "node_cut", "db_cut"):
                for proxy in proxies:
                    proxy.blackhole()
                await asyncio.sleep(lasted)
            elif kind == "silent":  # the broker's side goes quiet; the service's gets through
                for proxy in proxies:
                    proxy.blackhole(DOWN)
                await asyncio.sleep(lasted)
            elif kind == "asymmetric":  # the service's side goes nowhere; the broker's arrives
                for proxy in proxies:
                    proxy.blackhole(UP)
                await asyncio.sleep(lasted)
            elif kind == "drop":
                for proxy in proxies:
                    proxy.drop()
                await asyncio.sleep(lasted)
            elif kind in ("ack_lost", "ack_lost_late"):  # what the broker sends back is lost
                for proxy in proxies:
                    proxy.drop(DOWN)
                await asyncio.sleep(lasted)
            elif kind in ("reset", "db_reset"):
                for proxy in proxies:
                    proxy.reset(refuse=True)
                await asyncio.sleep(lasted)
            elif kind == "flap":
                while time.monotonic() - started < lasted:
                    for proxy in proxies:
                        proxy.blackhole()
                    await asyncio.sleep(FLAP_PERIOD_S)
                    for proxy in proxies:
                        proxy.heal()
                    await asyncio.sleep(FLAP_PERIOD_S)
        finally:
            record.bytes_lost = sum(proxy.bytes_dropped for proxy in proxies) - dropped_before
            for proxy in proxies:
                proxy.heal()
            ended.set_result(time.monotonic())
        await following
        self.report.faults[f"network_{kind}"] += 1
        self._done(record, ended.result())

    async def isolate_node(self, leader: bool = False) -> None:
        """Every link to one node cut: the services' (those on it must fail over), the
        routes to and from its peers, the operator's. The node is the one the order service,
        the busiest publisher, uses (the issue's stuck failover), or with ``leader`` the
        leader of the order stream."""
        stream_leader = await self.order_stream_leader()
        node = (stream_leader if leader else None) or self.current_node("order") or self.nodes[0]
        lasted = self.net.node_isolation_s
        started = time.monotonic()
        ended: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        records = {
            service: FaultRecord(
                "node_isolated",
                service,
                started - self._began,
                lasted,
                node=node,
                affected=bool(self.proxies[service][node].connected()),
                order_stream_leader=stream_leader or "",
            )
            for service in SERVICE_NAMES
        }
        following = [
            asyncio.create_task(
                self.follow_health(service, record, started, ended, node if record.affected else "")
            )
            for service, record in records.items()
        ]
        self.isolated.add(node)
        try:
            for service in SERVICE_NAMES:
                self.proxies[service][node].blackhole()
            if node in self.route_proxies:
                self.route_proxies[node].blackhole()
            for other, proxy in self.route_proxies.items():
                if other != node:
                    proxy.block_peer(node)
            if self.tool_proxy.connected(to=self._node_address(node)):
                self.tool_proxy.reset(refuse=False)  # it comes back through a healthy node
            routes_cut = sum(
                proxy.route_links(None if other == node else node)
                for other, proxy in self.route_proxies.items()
            )
            for record in records.values():
                record.routes_cut = routes_cut
            await asyncio.sleep(lasted)
        finally:
            self.isolated.discard(node)
            for proxy in self.all_proxies():
                if proxy is not self.tool_proxy:
                    proxy.heal()
            ended.set_result(time.monotonic())
        await asyncio.gather(*following)
        self.report.faults["network_node_isolated"] += 1
        for record in records.values():
            self._done(record, ended.result())

    def _done(self, record: FaultRecord, ended_at: float) -> None:
        self.fault_log.append(record)
        self._fault_ends.append((record, ended_at))
        self.console.print(record.line())
        bound = recovery_bound_s()
        if record.recovered_s is None or record.recovered_s > bound:
            self.report.violations.append(
                f"{record.service} not SERVING within {bound:.0f}s after a {record.kind} of"
                f" {record.lasted_s:.0f}s ended (recovered: {record.recovered_s})"
            )
        failed_over = record.failover_s is not None and record.failover_s <= bound
        if record.kind in FAILOVER_KINDS and record.affected and not failed_over:
            self.report.violations.append(
                f"{record.service} did not fail over from {record.node} within"
                f" {bound:.0f}s of a {record.kind} (failed over: {record.failover_s})"
            )

    async def follow_health(
        self,
        service: str,
        record: FaultRecord,
        started: float,
        ended: asyncio.Future[float],
        away_from: str = "",
    ) -> None:
        """Note when the service first says NOT_SERVING; with ``away_from`` (a node cut from
        it), when it is SERVING through another node while the fault lasts; and when, after
        the fault, it is SERVING again (and stays so for 2 s)."""
        stable_s = 2.0
        serving_since: float | None = None
        async with grpc.aio.insecure_channel(self.system.addresses[service]) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                serving = await _serving(stub)
                now = time.monotonic()
                if not serving and record.detected_s is None and not ended.done():
                    record.detected_s = round(now - started, 2)
                if (
                    away_from
                    and record.failover_s is None
                    and serving
                    and not ended.done()
                    and self.connected_elsewhere(service, away_from)
                ):
                    record.failover_s = round(now - started, 2)
                if ended.done():
                    end = ended.result()
                    if serving:
                        serving_since = serving_since or now
                        if now - serving_since >= stable_s:
                            record.recovered_s = round(max(0.0, serving_since - end), 2)
                            return
                    else:
                        serving_since = None
                    if now - end > 2 * recovery_bound_s():
                        return
                await asyncio.sleep(0.2)

    async def trickle(self, stub: order_grpc.OrderServiceAsyncStub, stop: asyncio.Event) -> None:
        """Orders keep coming while the faults last (mixed paths, as the workload's)."""
        rng = random.Random(self.net.seed + 1)
        paths = mixed_paths(100_000, seed=self.net.seed + 1)
        placing: list[asyncio.Task[None]] = []
        for index in itertools.count():
            if stop.is_set():
                break
            request = request_for(paths[index], 100_000 + index, rng)
            placing.append(asyncio.create_task(self._place(stub, paths[index], request)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0 / self.net.trickle_per_s)
        await asyncio.gather(*placing)

    async def _place(self, stub: order_grpc.OrderServiceAsyncStub, path: Any, request: Any) -> None:
        started = time.monotonic()
        for attempt in range(8):
            try:
                response = await stub.PlaceOrder(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                retriable = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if exc.code() not in retriable or attempt == 7:
                    self.orders_refused += 1
                    self.report.faults[f"order_refused_{exc.code().name}"] += 1
                    return
                await asyncio.sleep(0.5 * (attempt + 1))
            except grpc.aio.UsageError:  # the run ended early (it failed): its channel is closed
                return
            else:
                self.extra_orders.append(Placed(response.order.order_id, path, started))
                return

    # --- the run --------------------------------------------------------------------------

    async def run(self) -> ChaosReport:
        began = time.monotonic()
        for proxy in self.all_proxies():
            await proxy.start()
        try:
            await self.system.start()
            try:
                await self._run()
                self.stored_twice = await self.events_stored_twice()
            finally:
                for proxy in self.all_proxies():
                    proxy.heal()
                # In a thread: the services' last words to the broker go through the proxies,
                # which run on this loop.
                await asyncio.to_thread(self.system.stop)
        finally:
            for proxy in self.all_proxies():
                await proxy.stop()
            self.report.seconds = time.monotonic() - began
        for record, end in self._fault_ends:
            after = [t for t in self.completions if t >= end]
            record.first_saga_s = round(after[0] - end, 2) if after else None
        return self.report

    async def order_stream_leader(self) -> str | None:
        """The node that leads the order stream now (None: unknown, or a single broker)."""
        if self.net.cluster == 1:
            return None
        try:
            nc = await self.system.connect()
        except Exception as exc:
            log.warning("cannot ask for the order stream's leader: %r", exc)
            return None
        try:
            info = await nc.jetstream().stream_info(subjects.stream_name("shop.order"))
            return info.cluster.leader if info.cluster is not None else None
        except Exception as exc:
            log.warning("cannot ask for the order stream's leader: %r", exc)
            return None
        finally:
            await nc.close()

    async def events_stored_twice(self) -> dict[str, int]:
        """Per event stream, how many messages repeat an earlier one's ``Nats-Msg-Id``."""
        nc = await self.system.connect()
        counts: dict[str, int] = {}
        try:
            js = nc.jetstream()
            for context in contracts.contexts():
                stream = subjects.stream_name(context)
                try:
                    messages = await read_stream(js, stream)
                except Exception as exc:  # a context without a stream of events
                    log.debug("no stream %s: %r", stream, exc)
                    continue
                ids = Counter(m.headers.get("Nats-Msg-Id", "") for m in messages)
                counts[stream] = sum(n - 1 for msg_id, n in ids.items() if msg_id and n > 1)
        finally:
            await nc.close()
        return counts

    def recovery_by_kind(self) -> dict[str, dict[str, Any]]:
        """Per fault kind: how many, and the time to recover (max, median): from the fault's
        end to SERVING for every kind; from its start to SERVING through a healthy node for a
        node cut or isolation (the services that used the node)."""
        summary: dict[str, dict[str, Any]] = {}
        for kind in dict.fromkeys(r.kind for r in self.fault_log):
            records = [r for r in self.fault_log if r.kind == kind]
            entry: dict[str, Any] = {
                "faults": self.report.faults.get(f"network_{kind}", 0),
                "serving_after_end_s": _stats([r.recovered_s for r in records]),
            }
            if kind in FAILOVER_KINDS:
                entry["failover_from_start_s"] = _stats(
                    [r.failover_s for r in records if r.affected]
                )
            if "order" in {r.service for r in records}:
                entry["order_serving_after_end_s"] = _stats(
                    [r.recovered_s for r in records if r.service == "order"]
                )
            summary[kind] = entry
        return summary

    def violations_by_invariant(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for violation in self.report.violations:
            found = re.match(r"invariant (\d+)", violation)
            counts[f"invariant {found.group(1)}" if found else "other"] += 1
        return dict(sorted(counts.items()))

    def as_json(self) -> dict[str, Any]:
        return {
            **self.report.as_json(),
            "config": asdict(self.net) | {"database_url": redact_url(self.net.database_url)},
            "violations_by_invariant": self.violations_by_invariant(),
            "network_faults": [asdict(record) for record in self.fault_log],
            "recovery_bound_s": recovery_bound_s(),
            "recovery_by_kind": self.recovery_by_kind(),
            "orders_refused": self.orders_refused,
            "events_stored_twice": self.stored_twice,
        }

    def print_fault_log(self) -> None:
        self.console.print(
            f"network faults ({self.net.cluster} broker node(s), {self.net.store}; saga deadline"
            f" {self.net.saga_deadline_s:.0f}s, recovery bound {recovery_bound_s():.0f}s):"
        )
        for record in sorted(self.fault_log, key=lambda r: r.started):
            self.console.print("  " + record.line())
        for kind, entry in self.recovery_by_kind().items():
            self.console.print(f"  {kind}: {json.dumps(entry)}")
        self.console.print(
            f"events stored twice (acks lost past the duplicate window): {self.stored_twice}"
        )
        self.console.print(f"violations by invariant: {self.violations_by_invariant()}")


def _address(host: str, port: int | None) -> tuple[str, int]:
    return host, port or 5432


async def _serving(stub: health_pb2_grpc.HealthStubAsync) -> bool:
    try:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
    except grpc.aio.AioRpcError:
        return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


async def run_network_chaos(args: argparse.Namespace) -> int:
    """``choreo chaos --network``."""
    console = Console()
    store = args.store or ("postgres" if args.database_url else "sqlite")
    if args.database_url and store != "postgres":
        raise ConfigurationError("--database-url is for --store postgres")
    config = NetworkChaosConfig(
        sagas=args.sagas,
        concurrency=args.concurrency,
        seed=args.seed,
        duration_s=args.duration,
        extra_faults=args.network_faults,
        duplicate_window_s=args.duplicate_window,
        store=store,
        database_url=args.database_url or "",
        cluster=args.network_cluster,
    )
    chaos = NetworkChaos(config, console)
    report = await run_to_report(chaos, console, keep=args.keep)
    chaos.print_fault_log()
    if args.output:
        args.output.write_text(json.dumps(chaos.as_json(), indent=2) + "\n")
    return 0 if report.ok else 1
