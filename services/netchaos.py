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

While mixed orders flow (the workload of ``choreo chaos``), a seeded schedule injects: a
service cut from its broker (both directions blackholed; the order service, the busiest
publisher, is always among them), a silent connection (the broker's side goes quiet, the
service's still gets through), a dropped link, connections reset, a flapping link, and a
partition of the order service longer than the saga deadline. Then the checks of
``choreo chaos`` (every saga ends, invariants 1-6, the dead letters, the saga time bound), and
per fault: the time from its end to the service being SERVING again (its gRPC health, which is
NOT_SERVING while its broker connection is down) and to the first saga completed after it.
The run reuses :class:`services.chaos.Chaos` for all of it; only the faults are new.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import random
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console

from choreo import natsconn
from choreo.errors import ConfigurationError
from choreo.order.v1 import order_service_pb2_grpc as order_grpc
from choreo.supervisor import ProcessSpec
from services.chaos import Chaos, ChaosConfig, ChaosReport, print_report
from services.registry import SERVICE_NAMES
from services.system import System, SystemConfig
from services.workload import Placed, mixed_paths, request_for

log = logging.getLogger(__name__)

UP = "to_broker"  # service -> broker
DOWN = "to_service"  # broker -> service
DIRECTIONS = (UP, DOWN)
CHUNK = 64 * 1024


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
    ) -> None:
        self.name = name
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

    def heal(self) -> None:
        self._refusing = False
        self._dropping = dict.fromkeys(DIRECTIONS, False)
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
            host, port = self._upstream()
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
        flowing = self._flowing[direction]
        try:
            while True:
                await flowing.wait()  # blackholed: read nothing, so backpressure builds
                data = await reader.read(CHUNK)
                if not data:
                    break
                if self._dropping[direction]:
                    link.lost_bytes = True
                    continue
                await flowing.wait()  # what was read as the blackhole began is held
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return
        link.close()
        self._links.discard(link)


# --- the run ------------------------------------------------------------------------------

# A fault kind, what it does to the link, and for how long by default (seconds).
KINDS = ("cut", "silent", "drop", "reset", "flap", "long_partition")
FLAP_PERIOD_S = 2.0  # the link flaps down for this, up for this, again and again
GAP_S = 4.0  # between two faults of one service, once it is SERVING again


def recovery_bound_s() -> float:
    """The documented bound on a service's time to recover after a fault ends: the ping
    detection time (``choreo.natsconn``) plus 5 s."""
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
    drop_s: float = 6.0
    reset_s: float = 3.0  # new connections refused (reset) this long
    flap_s: float = 16.0
    # Partitions of the order service longer than the saga deadline (0: none).
    long_partitions: int = 1
    # Faults beyond the first round of one of each kind: more of them, on random services.
    extra_faults: int = 0
    duration_s: float = 150.0  # how long sagas may take to end once the faults are over
    store: str = "sqlite"
    database_url: str = ""

    @property
    def long_partition_s(self) -> float:
        """The order service cut for longer than the saga deadline."""
        return self.saga_deadline_s + 10.0


@dataclass
class FaultRecord:
    kind: str
    service: str
    started: float  # seconds since the run's faults began
    lasted_s: float
    # Fault start -> the service said NOT_SERVING (None: it never did, the fault was short).
    detected_s: float | None = None
    # Fault end -> the service SERVING again (None: not within the bound's double).
    recovered_s: float | None = None
    # Fault end -> the first saga completed after it.
    first_saga_s: float | None = None

    def line(self) -> str:
        def show(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}s"

        return (
            f"t+{self.started:6.1f}s {self.kind:15} {self.service:13} {self.lasted_s:5.1f}s"
            f"  NOT_SERVING after {show(self.detected_s):>6}"
            f"  SERVING {show(self.recovered_s):>6} after the end"
            f"  first saga done {show(self.first_saga_s):>6} after"
        )


class ProxiedSystem(System):
    """The reference system, each service reaching the broker through its own fault proxy."""

    def __init__(self, config: SystemConfig, proxies: Mapping[str, FaultProxy]) -> None:
        super().__init__(config)
        self.proxies = proxies

    def _spec(
        self, name: str, process: str, port: int, databases: Mapping[str, str], data: Path
    ) -> ProcessSpec:
        spec = super()._spec(name, process, port, databases, data)
        spec.env["CHOREO_NATS_URL"] = self.proxies[name].url
        return spec


class NetworkChaos(Chaos):
    """``choreo chaos`` with network faults instead of process faults (see the module doc)."""

    def __init__(self, config: NetworkChaosConfig, console: Console) -> None:
        chaos_config = ChaosConfig(
            sagas=config.sagas,
            concurrency=config.concurrency,
            seed=config.seed,
            saga_deadline_s=config.saga_deadline_s,
            duration_s=config.duration_s,
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
        self.proxies = {name: FaultProxy(self._broker_address, name=name) for name in SERVICE_NAMES}
        self.system = ProxiedSystem(self.system.config, self.proxies)
        self.fault_log: list[FaultRecord] = []
        self._fault_ends: list[tuple[FaultRecord, float]] = []
        self._began = 0.0
        self.orders_refused = 0

    def _broker_address(self) -> tuple[str, int]:
        broker = self.system.broker
        assert broker is not None, "the broker is not started"
        return broker.host, broker.port

    # --- the plan -------------------------------------------------------------------------

    def plan(self) -> dict[str, list[str]]:
        """Each service's faults, in order: one of each kind first (the order service cut
        under load, and cut again for longer than the saga deadline), then the extras."""
        others = [name for name in SERVICE_NAMES if name != "order"]
        shuffled = self.rng.sample(others, len(others))
        lanes: dict[str, list[str]] = {name: [] for name in SERVICE_NAMES}
        lanes["order"] += ["cut"] + ["long_partition"] * self.net.long_partitions
        for kind, name in zip(("silent", "drop", "reset", "flap"), shuffled, strict=False):
            lanes[name].append(kind)
        lanes[self.rng.choice(others)].append("cut")
        for _ in range(self.net.extra_faults):
            kind = self.rng.choice(("cut", "silent", "drop", "reset", "flap"))
            lanes[self.rng.choice(SERVICE_NAMES)].append(kind)
        return {name: kinds for name, kinds in lanes.items() if kinds}

    def duration_of(self, kind: str) -> float:
        n = self.net
        return {
            "cut": n.cut_s,
            "silent": n.silent_s,
            "drop": n.drop_s,
            "reset": n.reset_s,
            "flap": n.flap_s,
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
        try:
            await asyncio.gather(
                *(
                    self.lane(name, kinds, first_at=1.0 + 2.0 * index)
                    for index, (name, kinds) in enumerate(lanes.items())
                )
            )
        finally:
            stop.set()
            await trickle

    async def lane(self, service: str, kinds: list[str], first_at: float) -> None:
        """One service's faults, one after the other, each once the last has healed."""
        await asyncio.sleep(first_at)
        for kind in kinds:
            await self.one_fault(kind, service)
            await asyncio.sleep(GAP_S)

    async def one_fault(self, kind: str, service: str) -> None:
        proxy = self.proxies[service]
        lasted = self.duration_of(kind)
        started = time.monotonic()
        record = FaultRecord(kind, service, started - self._began, lasted)
        ended: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        following = asyncio.create_task(self.follow_health(service, record, started, ended))
        try:
            if kind in ("cut", "long_partition"):
                proxy.blackhole()
                await asyncio.sleep(lasted)
            elif kind == "silent":  # the broker's side goes quiet; the service's gets through
                proxy.blackhole(DOWN)
                await asyncio.sleep(lasted)
            elif kind == "drop":
                proxy.drop()
                await asyncio.sleep(lasted)
            elif kind == "reset":
                proxy.reset(refuse=True)
                await asyncio.sleep(lasted)
            elif kind == "flap":
                while time.monotonic() - started < lasted:
                    proxy.blackhole()
                    await asyncio.sleep(FLAP_PERIOD_S)
                    proxy.heal()
                    await asyncio.sleep(FLAP_PERIOD_S)
        finally:
            proxy.heal()
            ended.set_result(time.monotonic())
        await following
        self.fault_log.append(record)
        self._fault_ends.append((record, ended.result()))
        self.report.faults[f"network_{kind}"] += 1
        self.console.print(record.line())
        if record.recovered_s is None or record.recovered_s > recovery_bound_s():
            self.report.violations.append(
                f"{service} not SERVING within {recovery_bound_s():.0f}s after a {kind} of"
                f" {lasted:.0f}s ended (recovered: {record.recovered_s})"
            )

    async def follow_health(
        self, service: str, record: FaultRecord, started: float, ended: asyncio.Future[float]
    ) -> None:
        """Note when the service first says NOT_SERVING, and when, after the fault, it is
        SERVING again (and stays so for 2 s)."""
        stable_s = 2.0
        serving_since: float | None = None
        async with grpc.aio.insecure_channel(self.system.addresses[service]) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                serving = await _serving(stub)
                now = time.monotonic()
                if not serving and record.detected_s is None and not ended.done():
                    record.detected_s = round(now - started, 2)
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
            else:
                self.extra_orders.append(Placed(response.order.order_id, path, started))
                return

    # --- the run --------------------------------------------------------------------------

    async def run(self) -> ChaosReport:
        began = time.monotonic()
        for proxy in self.proxies.values():
            await proxy.start()
        try:
            await self.system.start()
            try:
                await self._run()
            finally:
                for proxy in self.proxies.values():
                    proxy.heal()
                # In a thread: the services' last words to the broker go through the proxies,
                # which run on this loop.
                await asyncio.to_thread(self.system.stop)
        finally:
            for proxy in self.proxies.values():
                await proxy.stop()
            self.report.seconds = time.monotonic() - began
        for record, end in self._fault_ends:
            after = [t for t in self.completions if t >= end]
            record.first_saga_s = round(after[0] - end, 2) if after else None
        return self.report

    def recovery_by_kind(self) -> dict[str, float | None]:
        """The longest time to SERVING after the end of a fault, per fault kind."""
        worst: dict[str, float | None] = {}
        for record in self.fault_log:
            key = f"{record.kind}:{'order' if record.service == 'order' else 'other'}"
            if record.recovered_s is None or worst.get(key, 0.0) is None:
                worst[key] = None
            else:
                worst[key] = max(worst.get(key) or 0.0, record.recovered_s)
        return worst

    def as_json(self) -> dict[str, Any]:
        return {
            **self.report.as_json(),
            "network_faults": [asdict(record) for record in self.fault_log],
            "recovery_bound_s": recovery_bound_s(),
            "worst_recovery_s_by_kind": self.recovery_by_kind(),
            "orders_refused": self.orders_refused,
        }

    def print_fault_log(self) -> None:
        self.console.print(
            f"network faults (saga deadline {self.net.saga_deadline_s:.0f}s, recovery bound"
            f" {recovery_bound_s():.0f}s after a fault ends):"
        )
        for record in sorted(self.fault_log, key=lambda r: r.started):
            self.console.print("  " + record.line())
        self.console.print(f"worst time to SERVING per kind: {self.recovery_by_kind()}")


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
        store=store,
        database_url=args.database_url or "",
    )
    chaos = NetworkChaos(config, console)
    try:
        report = await chaos.run()
    finally:
        if args.keep:
            console.print(f"kept {chaos.workdir}")
        else:
            await chaos.cleanup()
    print_report(console, report)
    chaos.print_fault_log()
    if args.output:
        args.output.write_text(json.dumps(chaos.as_json(), indent=2))
    return 0 if report.ok else 1
