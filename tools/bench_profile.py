"""``choreo bench --profile``: where each service's CPU goes, per saga and per handled event.

For the saga and for the naive build (``tools.naive``), the five services run as processes
under a closed loop of happy-path sagas. During a fixed window a sampling profiler (py-spy,
non-blocking, idle samples dropped, so samples are CPU time) records every service, and the
process's own CPU time is read before and after. Each sample is attributed to one layer by its
innermost frame that belongs to a known layer (see :data:`LAYERS`); a layer's share of a
process's samples times the process's CPU seconds, divided by the sagas completed in the
window, is its CPU per saga. Divided again by the events the service handles per saga, it is
the CPU per handled event. Writes ``profile.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from choreo.errors import ConfigurationError
from services.registry import SERVICE_NAMES
from services.system import System
from tools.bench import (
    NAIVE_ARGV,
    SERVE_ARGV,
    bench_config,
    closed_loop,
    happy_path_load,
    process_stats,
)
from tools.rawchain import BODY_SIZES, happy_reactions

# Layer -> module paths (as py-spy shortens them: relative to their sys.path entry) of the
# frames that belong to it. For each frame, from the innermost outwards, the first layer (in
# this order) whose prefix matches takes the sample.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gRPC", ("grpc/", "grpc_", "choreo/validation.py", "protovalidate/", "celpy/")),
    ("nats-py receive, ack, publish", ("nats/",)),
    ("SQL", ("choreo/store/", "aiosqlite/", "asyncpg/", "sqlite3/")),
    ("relay", ("choreo/outbox.py",)),
    ("envelope decode/encode", ("choreo/envelope.py", "google/protobuf/", "choreo/subjects.py")),
    ("runtime bookkeeping", ("tools/naive.py", "choreo/", "opentelemetry/")),
    ("handler logic", ("services/",)),
    ("asyncio event loop", ("asyncio/", "selectors.py", "uvloop/")),
)
OTHER = "other (stdlib, start-up)"
NATIVE_THREAD = "Thread.run (threading.py"
LAYER_NAMES = [name for name, _ in LAYERS] + [OTHER]


def frame_path(frame: str) -> str:
    """``function (path/to/module.py:123)`` -> ``path/to/module.py``."""
    _, _, location = frame.rpartition(" (")
    return location.rsplit(":", 1)[0]


def layer_of(stack: list[str]) -> str:
    """The layer of one sample, given its frames from the outermost to the innermost."""
    for frame in reversed(stack):
        path = frame_path(frame)
        for name, prefixes in LAYERS:
            if path.startswith(prefixes):
                return name
    return OTHER


def parse_collapsed(text: str) -> Counter[str]:
    """py-spy's ``--format raw`` output (``frame;frame;... count`` per line) -> samples per
    layer."""
    samples: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith(NATIVE_THREAD):
            continue  # a thread in native code with no Python frame (gRPC's poller): idle
        samples[layer_of(frames)] += int(count)
    return samples


def events_handled_per_saga(service: str) -> int:
    """Events a service handles in one happy saga (the order service also takes the gRPC
    PlaceOrder, counted as one)."""
    handled = sum(1 for trigger in happy_reactions(service) if trigger in BODY_SIZES)
    return handled + (1 if service == "order" else 0)


@dataclass
class ProfileResult:
    build: str  # "saga" or "naive"
    sagas: int
    seconds: float
    throughput: float
    cpu_ms_per_saga: dict[str, float] = field(default_factory=dict)  # per process
    # service -> layer -> CPU ms per saga
    layers_ms_per_saga: dict[str, dict[str, float]] = field(default_factory=dict)
    # service -> layer -> CPU ms per handled event
    layers_ms_per_event: dict[str, dict[str, float]] = field(default_factory=dict)

    def total_by_layer(self) -> dict[str, float]:
        totals: Counter[str] = Counter()
        for layers in self.layers_ms_per_saga.values():
            totals.update(layers)
        return {name: round(totals.get(name, 0.0), 3) for name in LAYER_NAMES}


def _py_spy() -> str:
    path = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(path).exists():
        raise ConfigurationError("py-spy is not installed: `pip install py-spy` (make venv does)")
    return path


async def profile_build(
    build: str, clients: int, seconds: float, rate_hz: int, console: Console
) -> ProfileResult:
    workdir = Path(tempfile.mkdtemp(prefix=f"choreo-profile-{build}-"))
    system = System(bench_config(workdir, NAIVE_ARGV if build == "naive" else SERVE_ARGV))
    spy = _py_spy()
    try:
        await system.start()
        assert system.supervisor is not None
        pids = {n: p.pid for n, p in system.supervisor.processes.items() if p.pid}
        async with happy_path_load(system) as (start, completions):
            await closed_loop(start, completions, clients, 2.0)  # warm-up
            console.print(f"profiling {build}: {clients} clients for {seconds:.0f}s ...")
            spies = {
                name: await asyncio.create_subprocess_exec(
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(rate_hz),
                    "--duration",
                    str(int(seconds)),
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(workdir / f"{name}.txt"),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                for name, pid in pids.items()
            }
            cpu_before, _ = process_stats(pids)
            loop = await closed_loop(start, completions, clients, seconds)
            cpu_after, _ = process_stats(pids)
            for process in spies.values():
                await asyncio.wait_for(process.wait(), 30)
    finally:
        system.stop()
    result = ProfileResult(build, loop.sagas, loop.seconds, loop.throughput)
    sagas = max(1, loop.sagas)
    for name in pids:
        cpu_ms = (cpu_after[name] - cpu_before[name]) * 1000 / sagas
        result.cpu_ms_per_saga[name] = round(cpu_ms, 3)
        samples_file = workdir / f"{name}.txt"
        samples = parse_collapsed(samples_file.read_text()) if samples_file.exists() else Counter()
        total = sum(samples.values()) or 1
        per_saga = {layer: round(cpu_ms * samples[layer] / total, 3) for layer in LAYER_NAMES}
        result.layers_ms_per_saga[name] = per_saga
        events = events_handled_per_saga(name)
        result.layers_ms_per_event[name] = {
            layer: round(value / events, 3) for layer, value in per_saga.items()
        }
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def profile_table(results: list[ProfileResult]) -> Table:
    table = Table(title="CPU ms per saga by layer, all five services (py-spy samples x CPU time)")
    table.add_column("layer")
    for result in results:
        table.add_column(f"{result.build} ms/saga", justify="right")
    totals = [result.total_by_layer() for result in results]
    for layer in LAYER_NAMES:
        table.add_row(layer, *(f"{total[layer]:.3f}" for total in totals))
    table.add_row(
        "[bold]total[/bold]", *(f"[bold]{sum(total.values()):.3f}[/bold]" for total in totals)
    )
    table.add_row("sagas/s while profiled", *(f"{r.throughput:.0f}" for r in results))
    return table


def event_table(result: ProfileResult) -> Table:
    table = Table(title=f"{result.build}: CPU ms per handled event, by service and layer")
    table.add_column("layer")
    for service in SERVICE_NAMES:
        table.add_column(f"{service} ({events_handled_per_saga(service)}/saga)", justify="right")
    for layer in LAYER_NAMES:
        table.add_row(
            layer, *(f"{result.layers_ms_per_event[s][layer]:.3f}" for s in SERVICE_NAMES)
        )
    return table


async def run_profile_bench(args: argparse.Namespace) -> int:
    console = Console(width=max(140, Console().width))
    seconds = 6.0 if args.quick else 15.0
    results = [
        await profile_build(build, clients=32, seconds=seconds, rate_hz=200, console=console)
        for build in ("saga", "naive")
    ]
    console.print(profile_table(results))
    for result in results:
        console.print(event_table(result))
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {
        "command": "choreo bench --profile" + (" --quick" if args.quick else ""),
        "layers": LAYER_NAMES,
        "builds": [
            {**asdict(result), "total_ms_per_saga_by_layer": result.total_by_layer()}
            for result in results
        ],
    }
    (output / "profile.json").write_text(json.dumps(figures, indent=2))
    console.print(f"figures: {output / 'profile.json'}")
    return 0
