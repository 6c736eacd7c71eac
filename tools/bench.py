"""``make bench`` / ``choreo bench``: sagas per second against FastStream and the raw JetStream
limit.

For each broker fsync setting (the default, and ``sync_interval: always``) it runs, each on a
fresh embedded broker of its own with the same stream settings:
- the **saga**: the five real services as processes (``choreo serve``), orders placed over gRPC;
- the **FastStream build** (the baseline): ``tools.faststream_build``, the same services'
  handlers, stores and gRPC API on faststream[nats], as a Python team that skips exactly-once
  would write it: one durable pull consumer per subscription with concurrent workers, commit
  then an awaited publish, ack on return, no inbox, outbox or dedup. ``saga / faststream`` (best
  level against best level) is the headline: what choreo's guarantees cost against what a team
  would otherwise build; beside it CPU per saga per process, and latency at the same open-loop
  rate;
- the **raw chain**: ``tools.rawchain``, one no-logic process per service with the same
  subscriptions, fan-out and message sizes, orders started by publishing ``OrderCreated``;
- the **durable raw chain**: the same, plus the runtime's inbox and outbox rows in SQLite per
  message (``--durable-db``): what exactly-once effects cost before any decoding or logic.
The two raw chains are the floor. The saga and the FastStream build are up at the same time
and take turns (each level in windows A B B A, the open loop likewise), so that a drift of the
machine's speed over minutes, up to 60% on the development VM, falls on both alike; each
line's CPU is read over its own windows only. The raw chains run one after the other. (The
serial naive build, ``tools.naive``, one message at a time per consumer on asyncio's loop, is
no longer a line here: it measured concurrency more than guarantees. ``choreo bench
--profile`` still profiles it.)
A saga is complete when its ``NotificationSent`` is published (the same point in every line).
Closed loop: sagas/s and p50/p95/p99 at several client concurrencies. Open loop: latency at a
fixed arrival rate of half the saga's best throughput, the same rate for every line. CPU
milliseconds per saga and resident memory per process. Figures go to
``bench-results/bench.json`` and ``bench-results/bench.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import nats
import psutil
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from choreo import subjects
from choreo.broker import EmbeddedBroker
from choreo.settings import RuntimeSettings
from choreo.streams import ensure_streams
from choreo.supervisor import ProcessSpec, Supervisor
from choreo.testing import envelope_for
from services.registry import SERVICE_NAMES
from services.settings import REPO_ROOT
from services.system import System, SystemConfig
from services.workload import SagaPath, request_for
from shop.order.v1 import events_pb2 as order_events
from shop.order.v1 import order_service_pb2_grpc as order_grpc

BENCH_CATALOG = REPO_ROOT / "catalog" / "bench.json"
SERVE_ARGV = ("-m", "choreo.cli", "serve")
# The baseline: the same saga on faststream[nats], no inbox, outbox or dedup.
FASTSTREAM_ARGV = ("-m", "tools.faststream_build")
# The serial naive build: plain nats-py, one message at a time per consumer, asyncio's loop.
NAIVE_ARGV = ("-m", "tools.naive")
DONE_SUBJECT = "shop.notification.v1.NotificationSent"


# What each line runs; "faststream" is the FastStream build (no inbox, outbox or dedup).
MODES = ("saga", "faststream", "raw", "durable")
BUILD_ARGV = {"saga": SERVE_ARGV, "faststream": FASTSTREAM_ARGV}


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    if not latencies_ms:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    ordered = sorted(latencies_ms)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}


@dataclass
class LoopResult:
    concurrency: int
    sagas: int
    seconds: float
    throughput: float
    latency_ms: dict[str, float]


@dataclass
class RunResult:
    mode: str  # one of MODES
    sync_always: bool
    closed: list[LoopResult] = field(default_factory=list)
    open_loop: dict[str, Any] = field(default_factory=dict)
    cpu_s_per_saga: dict[str, float] = field(default_factory=dict)  # over every level
    rss_mb_before: dict[str, float] = field(default_factory=dict)
    rss_mb_after: dict[str, float] = field(default_factory=dict)
    soak_rss_mb: dict[str, list[float]] = field(default_factory=dict)

    @property
    def best(self) -> float:
        return max((r.throughput for r in self.closed), default=0.0)


class Completions:
    """Saga completions, seen as NotificationSent on core NATS, by correlation id."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[float]] = {}
        self._early: dict[str, float] = {}
        # When set, every sighting is kept here too (monotonic seconds): ``--hops`` reads it.
        self.seen_at: dict[str, float] | None = None

    async def on_message(self, msg: Any) -> None:
        headers = msg.headers or {}
        # choreo's envelope header, or FastStream's own (the FastStream build's).
        correlation_id = headers.get("ce-correlationid") or headers.get("correlation_id", "")
        now = time.monotonic()
        if self.seen_at is not None:
            self.seen_at[correlation_id] = now
        future = self._waiting.pop(correlation_id, None)
        if future is None:
            self._early[correlation_id] = now
        elif not future.done():
            future.set_result(now)

    def expect(self, correlation_id: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if correlation_id in self._early:
            future.set_result(self._early.pop(correlation_id))
        else:
            self._waiting[correlation_id] = future
        return future


Starter = Callable[[], Awaitable[str]]  # starts one saga, returns its correlation id
T = TypeVar("T")
L = TypeVar("L")


async def _completions(nc: Any) -> Completions:
    completions = Completions()
    await nc.subscribe(subjects.event_type_filter(DONE_SUBJECT), cb=completions.on_message)
    return completions


def bench_config(workdir: Path, argv: tuple[str, ...] = SERVE_ARGV, **options: Any) -> SystemConfig:
    """The system every bench line runs: free ports, the bench catalog, and the runtime's
    default of no /metrics (it costs some 15% of sagas/s here; see the README). Tracing is off
    too unless OTEL_* is set."""
    return SystemConfig(
        data_dir=workdir,
        grpc_base_port=None,
        env={"CHOREO_CATALOG": str(BENCH_CATALOG), "CHOREO_METRICS_PORT": "0"},
        service_argv=argv,
        **options,
    )


@contextlib.asynccontextmanager
async def happy_path_load(system: System) -> AsyncIterator[tuple[Starter, Completions]]:
    """Against a running system: a starter that places happy-path orders over gRPC, and the
    completions it waits on (``NotificationSent``, seen on core NATS)."""
    nc = await system.connect()
    try:
        completions = await _completions(nc)
        rng = random.Random(5)
        counter = iter(range(10**9))
        async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
            stub: order_grpc.OrderServiceAsyncStub = order_grpc.OrderServiceStub(channel)

            async def start() -> str:
                request = request_for(SagaPath.HAPPY, next(counter), rng)
                return (await stub.PlaceOrder(request, timeout=30)).order.order_id

            yield start, completions
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def raw_chain_load(url: str) -> AsyncIterator[tuple[Starter, Completions]]:
    """For the raw chains: a starter that publishes ``OrderCreated`` of the saga's size."""
    nc = await nats.connect(url)
    try:
        completions = await _completions(nc)
        js = nc.jetstream()
        body = order_events.OrderCreated(
            order_id=str(uuid.uuid4()), customer_id="cust-000001", payment_token="tok_visa"
        )

        async def start() -> str:
            order_id = str(uuid.uuid4())
            envelope = envelope_for(
                body, aggregate_id=order_id, correlation_id=order_id, source="order"
            )
            payload = b"\x00" * 190
            await js.publish(envelope.subject, payload, headers=envelope.to_headers())
            return order_id

        yield start, completions
    finally:
        await nc.close()


async def one_saga(start: Starter, completions: Completions, timeout: float = 60) -> float:
    began = time.monotonic()
    correlation_id = await start()
    finished = await asyncio.wait_for(completions.expect(correlation_id), timeout)
    return (finished - began) * 1000


async def closed_window(
    start: Starter, completions: Completions, concurrency: int, seconds: float
) -> tuple[list[float], float]:
    """``concurrency`` clients, each starting a saga as soon as its last one completed, for
    ``seconds``: every saga's latency (ms) and the time it took, the last ones' included."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < deadline:
            latencies.append(await one_saga(start, completions))

    began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, time.monotonic() - began


def loop_result(concurrency: int, latencies: list[float], elapsed: float) -> LoopResult:
    return LoopResult(
        concurrency,
        len(latencies),
        round(elapsed, 2),
        round(len(latencies) / elapsed, 2),
        percentiles(latencies),
    )


async def closed_loop(
    start: Starter, completions: Completions, concurrency: int, seconds: float
) -> LoopResult:
    latencies, elapsed = await closed_window(start, completions, concurrency, seconds)
    return loop_result(concurrency, latencies, elapsed)


async def open_window(
    start: Starter, completions: Completions, rate: float, seconds: float
) -> list[float]:
    """Arrivals at a fixed rate regardless of completions (no coordinated omission): every
    saga's latency (ms)."""
    latencies: list[float] = []
    tasks = []
    interval = 1.0 / rate
    began = time.monotonic()
    for n in range(int(rate * seconds)):
        delay = began + n * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

        async def arrival() -> None:
            latencies.append(await one_saga(start, completions))

        tasks.append(asyncio.create_task(arrival()))
    await asyncio.gather(*tasks)
    return latencies


def open_loop_result(rate: float, latencies: list[float]) -> dict[str, Any]:
    return {
        "rate_per_s": round(rate, 2),
        "sagas": len(latencies),
        "latency_ms": percentiles(latencies),
        "cdf_ms": sorted(latencies),
    }


async def open_loop(
    start: Starter, completions: Completions, rate: float, seconds: float
) -> dict[str, Any]:
    return open_loop_result(rate, await open_window(start, completions, rate, seconds))


def cpu_ms_per_saga(
    cpu_before: dict[str, float], cpu_after: dict[str, float], sagas: int
) -> dict[str, float]:
    """Each process's CPU milliseconds per saga between two :func:`process_stats` readings."""
    return {
        name: round((cpu_after[name] - cpu_before[name]) * 1000 / max(1, sagas), 2)
        for name in cpu_after
    }


def process_stats(pids: dict[str, int]) -> tuple[dict[str, float], dict[str, float]]:
    cpu, rss = {}, {}
    for name, pid in pids.items():
        try:
            proc = psutil.Process(pid)
            times = proc.cpu_times()
            cpu[name] = times.user + times.system
            rss[name] = round(proc.memory_info().rss / 2**20, 1)
        except psutil.NoSuchProcess:
            cpu[name], rss[name] = 0.0, 0.0
    return cpu, rss


@dataclass
class Line:
    """One line of the bench, up and ready for load: its starter and completions, its
    processes, the figures so far, and the CPU its processes spent in its own windows."""

    result: RunResult
    start: Starter
    completions: Completions
    pids: dict[str, int]
    cpu_s: dict[str, dict[str, float]] = field(default_factory=dict)  # by phase, by process

    async def measured(self, phase: str, work: Awaitable[T]) -> T:
        """Await ``work``, adding what this line's processes spent meanwhile to ``phase``."""
        before, _ = process_stats(self.pids)
        done = await work
        after, _ = process_stats(self.pids)
        spent = self.cpu_s.setdefault(phase, {})
        for name, seconds in after.items():
            spent[name] = spent.get(name, 0.0) + seconds - before[name]
        return done


def _ms_per_saga(spent: dict[str, float], sagas: int) -> dict[str, float]:
    return {name: round(s * 1000 / max(1, sagas), 2) for name, s in spent.items()}


class Bench:
    # The saga and the FastStream build run side by side and take turns, so that a drift of
    # this machine's speed (10-60% over minutes) falls on both alike: each level is measured
    # in ROUNDS windows per line, in the order A B B A ...
    ROUNDS = 2

    def __init__(self, console: Console, args: argparse.Namespace) -> None:
        self.console = console
        self.quick: bool = args.quick
        self.levels = [4, 16, 48] if self.quick else [1, 8, 32, 64, 128]
        self.seconds = 3.0 if self.quick else 6.0
        self.warmup = 1.5 if self.quick else 3.0
        self.soak: int = args.soak

    async def run(self, mode: str, sync_always: bool, rate: float | None) -> RunResult:
        """One line on its own (the raw chains), at ``rate`` in the open loop (None: half its
        best)."""
        async with self.line(mode, sync_always) as line:
            await self._measure([line], rate)
        return line.result

    async def run_pair(self, sync_always: bool) -> tuple[RunResult, RunResult]:
        """The saga and the FastStream build, both up, measured in turns; the open loop runs
        at half the saga's best rate."""
        async with (
            self.line("saga", sync_always) as saga,
            self.line("faststream", sync_always) as faststream,
        ):
            await self._measure([saga, faststream], None)
            if self.soak:
                await self._soak(saga.result, saga.start, saga.completions, saga.pids)
            for line in (saga, faststream):
                _, line.result.rss_mb_after = process_stats(line.pids)
        return saga.result, faststream.result

    @contextlib.asynccontextmanager
    async def line(self, mode: str, sync_always: bool) -> AsyncIterator[Line]:
        """``mode`` started on a fresh broker of its own, with load ready; stopped after."""
        workdir = Path(tempfile.mkdtemp(prefix=f"choreo-bench-{mode}-"))
        pids: dict[str, int] = {}
        system: System | None = None
        broker: EmbeddedBroker | None = None
        supervisor: Supervisor | None = None
        try:
            if mode in BUILD_ARGV:
                system = System(bench_config(workdir, BUILD_ARGV[mode], sync_always=sync_always))
                await system.start()
                assert system.broker and system.supervisor
                broker = system.broker
                pids = {n: p.pid for n, p in system.supervisor.processes.items() if p.pid}
            else:
                broker = EmbeddedBroker(store_dir=workdir / "jetstream", sync_always=sync_always)
                broker.start()
                nc0 = await nats.connect(broker.url)
                await ensure_streams(nc0.jetstream(), RuntimeSettings())
                await nc0.close()
                supervisor = Supervisor(
                    [
                        ProcessSpec(
                            name,
                            [
                                sys.executable,
                                "-m",
                                "tools.rawchain",
                                name,
                                "--nats-url",
                                broker.url,
                                *(
                                    ["--durable-db", str(workdir / f"{name}.db")]
                                    if mode == "durable"
                                    else []
                                ),
                            ],
                            {},
                        )
                        for name in SERVICE_NAMES
                    ]
                )
                await supervisor.start_all()
                await asyncio.sleep(1.0)  # let the consumers bind
                pids = {n: p.pid for n, p in supervisor.processes.items() if p.pid}
            assert broker.pid is not None
            pids["nats-server"] = broker.pid
            load = happy_path_load(system) if system is not None else raw_chain_load(broker.url)
            async with load as (start, completions):
                line = Line(RunResult(mode, sync_always), start, completions, pids)
                _, line.result.rss_mb_before = process_stats(pids)
                yield line
                if not line.result.rss_mb_after:
                    _, line.result.rss_mb_after = process_stats(pids)
        finally:
            if system is not None:
                system.stop()
            if supervisor is not None:
                supervisor.stop_all()
            if broker is not None and system is None:
                broker.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    async def _measure(self, lines: list[Line], rate: float | None) -> None:
        """Every closed-loop level, then the open loop, for each of ``lines`` in turns."""
        rounds = self.ROUNDS if len(lines) > 1 else 1
        window_s = self.seconds / rounds
        for line in lines:
            await closed_loop(line.start, line.completions, self.levels[-1], self.warmup)
        label = " + ".join(
            f"{line.result.mode} sync={'always' if line.result.sync_always else 'default'}"
            for line in lines
        )
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as progress:
            task = progress.add_task(label, total=len(self.levels) + 1)
            for level in self.levels:
                turns = await take_turns(lines, rounds, "closed", closed_window, level, window_s)
                for line, windows in zip(lines, turns, strict=True):
                    latencies = [ms for window, _ in windows for ms in window]
                    elapsed = sum(seconds for _, seconds in windows)
                    line.result.closed.append(loop_result(level, latencies, elapsed))
                progress.advance(task)
            target = rate if rate is not None else lines[0].result.best / 2
            opened = await take_turns(lines, rounds, "open", open_window, target, window_s)
            for line, runs in zip(lines, opened, strict=True):
                result = line.result
                result.open_loop = open_loop_result(target, [ms for run in runs for ms in run])
                # Below saturation a saga costs more than at the best level (less batching):
                # the open loop's own figure, beside the whole run's.
                result.open_loop["cpu_ms_per_saga"] = _ms_per_saga(
                    line.cpu_s["open"], result.open_loop["sagas"]
                )
                whole = {
                    name: line.cpu_s["closed"][name] + line.cpu_s["open"][name]
                    for name in line.pids
                }
                sagas = sum(loop.sagas for loop in result.closed) + result.open_loop["sagas"]
                result.cpu_s_per_saga = {
                    name: round(ms / 1000, 5) for name, ms in _ms_per_saga(whole, sagas).items()
                }
            progress.advance(task)

    async def _soak(
        self, result: RunResult, start: Starter, completions: Completions, pids: dict[str, int]
    ) -> None:
        samples: dict[str, list[float]] = {name: [] for name in pids}
        done = 0
        step = max(500, self.soak // 20)
        with Progress(
            TextColumn("soak"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=self.console,
        ) as progress:
            task = progress.add_task("soak", total=self.soak)
            semaphore = asyncio.Semaphore(32)

            async def bounded() -> None:
                async with semaphore:
                    await one_saga(start, completions)

            while done < self.soak:
                chunk = min(step, self.soak - done)
                await asyncio.gather(*(bounded() for _ in range(chunk)))
                done += chunk
                progress.update(task, completed=done)
                _, rss = process_stats(pids)
                for name, value in rss.items():
                    samples[name].append(value)
        result.soak_rss_mb = samples


def _turns(lines: list[L], rounds: int) -> list[list[L]]:
    """The order of the lines in each round: A B, then B A, ... (a drift during a level then
    weighs on both)."""
    return [lines if index % 2 == 0 else lines[::-1] for index in range(rounds)]


async def take_turns(
    lines: list[Line],
    rounds: int,
    phase: str,
    window: Callable[..., Awaitable[T]],
    *args: float,
) -> list[list[T]]:
    """``window(start, completions, *args)`` for every line, ``rounds`` times, the lines taking
    turns: each line's results, one per round (its CPU added to ``phase``)."""
    results: list[list[T]] = [[] for _ in lines]
    for order in _turns(list(range(len(lines))), rounds):
        for index in order:
            line = lines[index]
            work = window(line.start, line.completions, *args)
            results[index].append(await line.measured(phase, work))
    return results


def faststream_settings() -> dict[str, Any]:
    """How the FastStream build ran (its version and the concurrency it was given)."""
    from importlib.metadata import version

    from tools import faststream_build

    max_workers, fetch_batch = faststream_build.concurrency()
    return {
        "version": version("faststream"),
        "max_workers": max_workers,
        "fetch_batch": fetch_batch,
        "bodies": "protobuf",
        "loop": "uvloop",
    }


def run_of(runs: list[RunResult], mode: str, sync_always: bool) -> RunResult:
    return next(r for r in runs if r.mode == mode and r.sync_always == sync_always)


def best_ratios(runs: list[RunResult], sync_always: bool) -> dict[str, float]:
    """saga/faststream (the guarantees' price against what a team would build instead),
    saga/raw, durable/raw, saga/durable and faststream/raw, best level vs best level."""
    saga, faststream, raw, durable = (run_of(runs, m, sync_always) for m in MODES)
    return {
        "saga_vs_faststream": round(saga.best / max(1e-9, faststream.best), 3),
        "saga_vs_raw": round(saga.best / max(1e-9, raw.best), 3),
        "durable_vs_raw": round(durable.best / max(1e-9, raw.best), 3),
        "saga_vs_durable": round(saga.best / max(1e-9, durable.best), 3),
        "faststream_vs_raw": round(faststream.best / max(1e-9, raw.best), 3),
    }


SERVICES_TOTAL = "services"
CPU_TOTAL = "total"


def cpu_ms_totals(per_process: dict[str, float]) -> dict[str, float]:
    """Per-process CPU ms per saga, with the five services' sum and the sum with the broker."""
    services = sum(v for name, v in per_process.items() if name != "nats-server")
    return {
        **per_process,
        SERVICES_TOTAL: round(services, 2),
        CPU_TOTAL: round(sum(per_process.values()), 2),
    }


def cpu_comparison(runs: list[RunResult], sync_always: bool) -> dict[str, Any]:
    """CPU ms per saga per process, the saga beside the FastStream build: over every closed
    level and the open loop together, and in the open loop alone (same rate for both)."""
    saga, faststream = (run_of(runs, m, sync_always) for m in ("saga", "faststream"))

    def whole(run: RunResult) -> dict[str, float]:
        return cpu_ms_totals({n: round(s * 1000, 2) for n, s in run.cpu_s_per_saga.items()})

    def opened(run: RunResult) -> dict[str, float]:
        return cpu_ms_totals(dict(run.open_loop.get("cpu_ms_per_saga", {})))

    comparison: dict[str, Any] = {
        "whole_run": {"saga": whole(saga), "faststream": whole(faststream)},
        "open_loop": {"saga": opened(saga), "faststream": opened(faststream)},
    }
    for part in ("whole_run", "open_loop"):
        both = comparison[part]
        fs_total = both["faststream"].get(CPU_TOTAL, 0.0)
        both["saga_vs_faststream"] = (
            round(both["saga"].get(CPU_TOTAL, 0.0) / fs_total, 3) if fs_total else None
        )
    return comparison


def ratio_table(runs: list[RunResult]) -> Table:
    table = Table(
        title="Sagas/s: choreo vs the FastStream build and the raw JetStream chain"
        " (same run, same broker settings)"
    )
    for column in (
        "fsync",
        "clients",
        "saga/s",
        "faststream/s",
        "saga/faststream",
        "raw/s",
        "saga/raw",
        "durable raw/s",
        "saga p50/p99 ms",
        "faststream p50/p99 ms",
    ):
        table.add_column(column, justify="right")
    for sync_always in (False, True):
        fsync = "always" if sync_always else "default"
        saga, faststream, raw, durable = (run_of(runs, m, sync_always) for m in MODES)
        for s, f, r, d in zip(
            saga.closed, faststream.closed, raw.closed, durable.closed, strict=True
        ):
            table.add_row(
                fsync,
                str(s.concurrency),
                f"{s.throughput:.1f}",
                f"{f.throughput:.1f}",
                f"{s.throughput / f.throughput:.2f}" if f.throughput else "-",
                f"{r.throughput:.1f}",
                f"{s.throughput / r.throughput:.2f}" if r.throughput else "-",
                f"{d.throughput:.1f}",
                f"{s.latency_ms['p50']:.0f}/{s.latency_ms['p99']:.0f}",
                f"{f.latency_ms['p50']:.0f}/{f.latency_ms['p99']:.0f}",
            )
        ratios = best_ratios(runs, sync_always)
        table.add_row(
            fsync,
            "best",
            f"{saga.best:.1f}",
            f"{faststream.best:.1f}",
            f"[bold]{ratios['saga_vs_faststream']:.2f}[/bold]",
            f"{raw.best:.1f}",
            f"{ratios['saga_vs_raw']:.2f}",
            f"{durable.best:.1f} ({ratios['durable_vs_raw']:.2f} of raw)",
            "",
            "",
        )
    return table


def open_loop_table(runs: list[RunResult]) -> Table:
    """Every line's latency at the same open-loop rate (half the saga's best), and the CPU
    each spent per saga there."""
    table = Table(title="Open loop at half the saga's best rate: latency and CPU per saga")
    for column in ("fsync", "line", "rate/s", "sagas", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="right")
    table.add_column("CPU ms/saga: services + broker", justify="right")
    for sync_always in (False, True):
        for mode in MODES:
            run = run_of(runs, mode, sync_always)
            ol = run.open_loop
            cpu = cpu_ms_totals(dict(ol.get("cpu_ms_per_saga", {})))
            table.add_row(
                "always" if sync_always else "default",
                mode,
                f"{ol.get('rate_per_s', 0)}",
                f"{ol.get('sagas', 0)}",
                f"{ol['latency_ms']['p50']:.1f}",
                f"{ol['latency_ms']['p95']:.1f}",
                f"{ol['latency_ms']['p99']:.1f}",
                f"{cpu[SERVICES_TOTAL]:.2f} + {cpu.get('nats-server', 0.0):.2f}"
                f" = {cpu[CPU_TOTAL]:.2f}",
            )
    return table


def cpu_table(runs: list[RunResult]) -> Table:
    """CPU ms per saga per process over the whole run (every closed level and the open
    loop), the saga beside the FastStream build."""
    table = Table(title="CPU ms per saga per process, whole run: saga vs FastStream build")
    names = [*SERVICE_NAMES, "nats-server", SERVICES_TOTAL, CPU_TOTAL]
    table.add_column("fsync", justify="right")
    table.add_column("line", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for sync_always in (False, True):
        whole = cpu_comparison(runs, sync_always)["whole_run"]
        for mode in ("saga", "faststream"):
            table.add_row(
                "always" if sync_always else "default",
                mode,
                *(f"{whole[mode].get(name, 0.0):.2f}" for name in names),
            )
    return table


def plot(runs: list[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        label = f"{run.mode} ({'fsync always' if run.sync_always else 'default fsync'})"
        style = {"saga": "-", "faststream": "-.", "raw": "--", "durable": ":"}[run.mode]
        left.plot(
            [r.concurrency for r in run.closed],
            [r.throughput for r in run.closed],
            style,
            marker="o",
            label=label,
        )
        cdf = run.open_loop.get("cdf_ms", [])
        if cdf:
            right.plot(
                cdf,
                [i / len(cdf) for i in range(len(cdf))],
                style,
                label=f"{label} @ {run.open_loop['rate_per_s']:.0f}/s",
            )
    left.set(
        xlabel="concurrent clients (closed loop)",
        ylabel="sagas / s",
        title="Throughput vs concurrency",
        xscale="log",
    )
    right.set(
        xlabel="saga latency (ms)",
        ylabel="fraction of sagas",
        title="Latency CDF, open loop at half of the saga's best",
        xscale="log",
    )
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


async def run_bench(args: argparse.Namespace) -> int:
    # Wide enough for the tables when the output is a file, not a terminal.
    console = Console(width=max(140, Console().width))
    bench = Bench(console, args)
    runs: list[RunResult] = []
    for sync_always in (False, True):
        saga, faststream = await bench.run_pair(sync_always)
        runs += [saga, faststream]
        # The raw chains get the same open-loop rate as the saga, for a like-for-like CDF.
        for mode in MODES[2:]:
            runs.append(await bench.run(mode, sync_always, saga.best / 2))
        bench.soak = 0  # one soak is enough
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    figures = {
        "machine": {
            "cpus": psutil.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "command": "choreo bench"
        + (" --quick" if args.quick else "")
        + (f" --soak {args.soak}" if args.soak else ""),
        "runs": [asdict(run) for run in runs],
        "ratios": {
            ("always" if s else "default"): best_ratios(runs, s)["saga_vs_raw"]
            for s in (False, True)
        },
        # The headline: the saga against the FastStream build (no inbox, outbox or dedup).
        "saga_vs_faststream": {
            ("always" if s else "default"): best_ratios(runs, s)["saga_vs_faststream"]
            for s in (False, True)
        },
        "cpu_ms_per_saga": {
            ("always" if s else "default"): cpu_comparison(runs, s) for s in (False, True)
        },
        "faststream": faststream_settings(),
        "ratios_detail": {
            ("always" if s else "default"): best_ratios(runs, s) for s in (False, True)
        },
    }
    topologies = None
    if not args.skip_topologies:
        # The same saga by store and broker topology, in this run (issue: production topology).
        from tools.topology_bench import measure_topologies

        topologies, figures["by_topology"] = await measure_topologies(console, args.quick)
    (output / "bench.json").write_text(json.dumps(figures, indent=2))
    plot(runs, output / "bench.png")
    console.print(ratio_table(runs))
    console.print(open_loop_table(runs))
    console.print(cpu_table(runs))
    if topologies is not None:
        from tools.topology_bench import topology_table

        console.print(topology_table(topologies))
    for run in runs:
        if run.mode in BUILD_ARGV:
            ol = run.open_loop
            console.print(
                f"{run.mode} open loop ({'fsync always' if run.sync_always else 'default fsync'}):"
                f" {ol['rate_per_s']}/s -> p50 {ol['latency_ms']['p50']} ms,"
                f" p99 {ol['latency_ms']['p99']} ms"
            )
            console.print(f"  CPU ms/saga in the open loop: {ol['cpu_ms_per_saga']}")
            console.print(f"  CPU s/saga over the whole run (every level): {run.cpu_s_per_saga}")
            console.print(f"  RSS MB before {run.rss_mb_before} after {run.rss_mb_after}")
    soak = next((r for r in runs if r.soak_rss_mb), None)
    if soak:
        growth = {
            name: round(values[-1] / values[0] - 1, 3)
            for name, values in soak.soak_rss_mb.items()
            if values and values[0]
        }
        console.print(f"soak of {args.soak} sagas, RSS growth first->last sample: {growth}")
        figures["soak_growth"] = growth
        (output / "bench.json").write_text(json.dumps(figures, indent=2))
    console.print(f"figures: {output / 'bench.json'}, plot: {output / 'bench.png'}")
    return 0
