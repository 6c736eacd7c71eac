"""``make bench`` / ``choreo bench``: sagas per second against the raw JetStream limit.

For each broker fsync setting (the default, and ``sync_interval: always``) it runs, on a fresh
embedded broker with the same stream settings:
- the **saga**: the five real services as processes, orders placed over gRPC;
- the **raw chain**: ``services.rawchain``, one no-logic process per service with the same
  subscriptions, fan-out and message sizes, orders started by publishing ``OrderCreated``;
- the **durable raw chain**: the same, plus the runtime's inbox and outbox rows in SQLite per
  message (``--durable-db``): what exactly-once effects cost before any decoding or logic.
A saga is complete when its ``NotificationSent`` is published (the same point in both).
Closed loop: sagas/s and p50/p95/p99 at several client concurrencies. Open loop: latency at a
fixed arrival rate of half the saga's best throughput. CPU seconds per saga and resident
memory per process. Figures go to ``bench-results/bench.json`` and ``bench-results/bench.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
import psutil
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from choreo.broker import EmbeddedBroker
from choreo.order.v1 import events_pb2 as order_events
from choreo.order.v1 import order_service_pb2_grpc as order_grpc
from choreo.settings import RuntimeSettings
from choreo.streams import ensure_streams
from choreo.supervisor import ProcessSpec, Supervisor
from choreo.testing import envelope_for
from services.registry import SERVICE_NAMES
from services.settings import REPO_ROOT
from services.system import System, SystemConfig
from services.workload import SagaPath, request_for

BENCH_CATALOG = REPO_ROOT / "catalog" / "bench.json"
DONE_SUBJECT = "choreo.notification.v1.NotificationSent"


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
    mode: str  # "saga", "raw" or "durable" (raw chain + inbox/outbox)
    sync_always: bool
    closed: list[LoopResult] = field(default_factory=list)
    open_loop: dict[str, Any] = field(default_factory=dict)
    cpu_s_per_saga: dict[str, float] = field(default_factory=dict)
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

    async def on_message(self, msg: Any) -> None:
        correlation_id = (msg.headers or {}).get("ce-correlationid", "")
        now = time.monotonic()
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


async def one_saga(start: Starter, completions: Completions, timeout: float = 60) -> float:
    began = time.monotonic()
    correlation_id = await start()
    finished = await asyncio.wait_for(completions.expect(correlation_id), timeout)
    return (finished - began) * 1000


async def closed_loop(
    start: Starter, completions: Completions, concurrency: int, seconds: float
) -> LoopResult:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < deadline:
            latencies.append(await one_saga(start, completions))

    began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.monotonic() - began
    return LoopResult(
        concurrency,
        len(latencies),
        round(elapsed, 2),
        round(len(latencies) / elapsed, 2),
        percentiles(latencies),
    )


async def open_loop(
    start: Starter, completions: Completions, rate: float, seconds: float
) -> dict[str, Any]:
    """Arrivals at a fixed rate regardless of completions (no coordinated omission)."""
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
    return {
        "rate_per_s": round(rate, 2),
        "sagas": len(latencies),
        "latency_ms": percentiles(latencies),
        "cdf_ms": sorted(latencies),
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


class Bench:
    def __init__(self, console: Console, args: argparse.Namespace) -> None:
        self.console = console
        self.quick: bool = args.quick
        self.levels = [4, 16, 48] if self.quick else [1, 8, 32, 64, 128]
        self.seconds = 3.0 if self.quick else 6.0
        self.warmup = 1.5 if self.quick else 3.0
        self.soak: int = args.soak

    async def run(self, mode: str, sync_always: bool, rate: float | None) -> RunResult:
        result = RunResult(mode, sync_always)
        workdir = Path(tempfile.mkdtemp(prefix=f"choreo-bench-{mode}-"))
        pids: dict[str, int] = {}
        system: System | None = None
        broker: EmbeddedBroker | None = None
        supervisor: Supervisor | None = None
        try:
            if mode == "saga":
                system = System(
                    SystemConfig(
                        data_dir=workdir,
                        grpc_base_port=None,
                        sync_always=sync_always,
                        env={"CHOREO_CATALOG": str(BENCH_CATALOG)},
                    )
                )
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
                                "services.rawchain",
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
            await self._measure(result, mode, broker.url, system, pids, rate)
        finally:
            if system is not None:
                system.stop()
            if supervisor is not None:
                supervisor.stop_all()
            if broker is not None and system is None:
                broker.stop()
            shutil.rmtree(workdir, ignore_errors=True)
        return result

    async def _measure(
        self,
        result: RunResult,
        mode: str,
        url: str,
        system: System | None,
        pids: dict[str, int],
        rate: float | None,
    ) -> None:
        nc = await nats.connect(url)
        completions = Completions()
        await nc.subscribe(DONE_SUBJECT, cb=completions.on_message)
        js = nc.jetstream()
        channel = grpc.aio.insecure_channel(system.addresses["order"]) if system else None
        counter = iter(range(10**9))
        try:
            if channel is not None:
                stub: order_grpc.OrderServiceAsyncStub = order_grpc.OrderServiceStub(channel)
                rng = random.Random(5)

                async def start() -> str:
                    request = request_for(SagaPath.HAPPY, next(counter), rng)
                    return (await stub.PlaceOrder(request, timeout=30)).order.order_id
            else:
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

            label = f"{mode:<4} sync={'always' if result.sync_always else 'default'}"
            await closed_loop(start, completions, self.levels[-1], self.warmup)  # warm-up
            cpu_before, result.rss_mb_before = process_stats(pids)
            sagas_measured = 0
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            ) as progress:
                task = progress.add_task(label, total=len(self.levels) + 1)
                for level in self.levels:
                    loop_result = await closed_loop(start, completions, level, self.seconds)
                    result.closed.append(loop_result)
                    sagas_measured += loop_result.sagas
                    progress.advance(task)
                target = rate if rate is not None else result.best / 2
                result.open_loop = await open_loop(start, completions, target, self.seconds)
                sagas_measured += result.open_loop["sagas"]
                progress.advance(task)
            cpu_after, _ = process_stats(pids)
            result.cpu_s_per_saga = {
                name: round((cpu_after[name] - cpu_before[name]) / max(1, sagas_measured), 5)
                for name in pids
            }
            if self.soak and mode == "saga":
                await self._soak(result, start, completions, pids)
            _, result.rss_mb_after = process_stats(pids)
        finally:
            if channel is not None:
                await channel.close()
            await nc.close()

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


def run_of(runs: list[RunResult], mode: str, sync_always: bool) -> RunResult:
    return next(r for r in runs if r.mode == mode and r.sync_always == sync_always)


def best_ratios(runs: list[RunResult], sync_always: bool) -> dict[str, float]:
    """saga/raw (the figure the issue asks for), durable/raw and saga/durable, best vs best."""
    saga, raw, durable = (run_of(runs, m, sync_always) for m in ("saga", "raw", "durable"))
    return {
        "saga_vs_raw": round(saga.best / max(1e-9, raw.best), 3),
        "durable_vs_raw": round(durable.best / max(1e-9, raw.best), 3),
        "saga_vs_durable": round(saga.best / max(1e-9, durable.best), 3),
    }


def ratio_table(runs: list[RunResult]) -> Table:
    table = Table(title="Sagas/s: choreo saga vs the raw JetStream chain (same run, same broker)")
    for column in (
        "fsync",
        "clients",
        "saga/s",
        "raw/s",
        "ratio",
        "durable raw/s",
        "saga p50/p99 ms",
        "raw p50/p99 ms",
    ):
        table.add_column(column, justify="right")
    for sync_always in (False, True):
        fsync = "always" if sync_always else "default"
        saga, raw, durable = (run_of(runs, m, sync_always) for m in ("saga", "raw", "durable"))
        for s, r, d in zip(saga.closed, raw.closed, durable.closed, strict=True):
            table.add_row(
                fsync,
                str(s.concurrency),
                f"{s.throughput:.1f}",
                f"{r.throughput:.1f}",
                f"{s.throughput / r.throughput:.2f}" if r.throughput else "-",
                f"{d.throughput:.1f}",
                f"{s.latency_ms['p50']:.0f}/{s.latency_ms['p99']:.0f}",
                f"{r.latency_ms['p50']:.0f}/{r.latency_ms['p99']:.0f}",
            )
        ratios = best_ratios(runs, sync_always)
        table.add_row(
            fsync,
            "best",
            f"{saga.best:.1f}",
            f"{raw.best:.1f}",
            f"[bold]{ratios['saga_vs_raw']:.2f}[/bold]",
            f"{durable.best:.1f} ({ratios['durable_vs_raw']:.2f} of raw)",
            "",
            "",
        )
    return table


def plot(runs: list[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        label = f"{run.mode} ({'fsync always' if run.sync_always else 'default fsync'})"
        style = {"saga": "-", "raw": "--", "durable": ":"}[run.mode]
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
    console = Console()
    bench = Bench(console, args)
    runs: list[RunResult] = []
    for sync_always in (False, True):
        saga = await bench.run("saga", sync_always, None)
        runs.append(saga)
        # The raw chains get the same open-loop rate as the saga, for a like-for-like CDF.
        runs.append(await bench.run("raw", sync_always, saga.best / 2))
        runs.append(await bench.run("durable", sync_always, saga.best / 2))
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
        "ratios_detail": {
            ("always" if s else "default"): best_ratios(runs, s) for s in (False, True)
        },
    }
    (output / "bench.json").write_text(json.dumps(figures, indent=2))
    plot(runs, output / "bench.png")
    console.print(ratio_table(runs))
    for run in runs:
        if run.mode == "saga":
            ol = run.open_loop
            console.print(
                f"saga open loop ({'fsync always' if run.sync_always else 'default fsync'}):"
                f" {ol['rate_per_s']}/s -> p50 {ol['latency_ms']['p50']} ms,"
                f" p99 {ol['latency_ms']['p99']} ms"
            )
            console.print(f"  CPU s/saga: {run.cpu_s_per_saga}")
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
