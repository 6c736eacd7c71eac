"""``choreo bench --topologies``: sagas/s of the same system on SQLite, on Postgres, and on
Postgres with a 3-node JetStream cluster (R3 streams), side by side in one run.

Each topology runs the five services as processes (``System``), warms up, then runs the happy
path closed-loop at a few client counts; the best level is its figure. Postgres databases get a
name of this run's own and are dropped afterwards. Writes ``topologies.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from services.system import System, drop_postgres_databases
from tools.bench import LoopResult, bench_config, closed_loop, happy_path_load

TOPOLOGIES = (
    ("sqlite", "sqlite", 1),
    ("postgres", "postgres", 1),
    ("postgres + 3-node cluster (R3)", "postgres", 3),
)


@dataclass
class TopologyResult:
    name: str
    store: str
    cluster: int
    closed: list[LoopResult] = field(default_factory=list)

    @property
    def best(self) -> float:
        return max((loop.throughput for loop in self.closed), default=0.0)


async def measure(
    name: str, store: str, cluster: int, levels: list[int], seconds: float
) -> TopologyResult:
    result = TopologyResult(name, store, cluster)
    workdir = Path(tempfile.mkdtemp(prefix="choreo-bench-topology-"))
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    system = System(
        bench_config(
            workdir,
            store=store,
            cluster=cluster,
            database_url=f"postgresql://127.0.0.1:5432/{prefix}",
        )
    )
    try:
        await system.start()
        async with happy_path_load(system) as (start, completions):
            await closed_loop(start, completions, levels[-1], 2.0)  # warm-up
            for level in levels:
                result.closed.append(await closed_loop(start, completions, level, seconds))
    finally:
        system.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if store == "postgres":
            await drop_postgres_databases(system.database_urls.values())
    return result


async def measure_topologies(
    console: Console, quick: bool
) -> tuple[list[TopologyResult], dict[str, Any]]:
    """Every topology in turn; returns the results and their JSON figures."""
    levels = [16, 48] if quick else [16, 32, 64]
    seconds = 4.0 if quick else 6.0
    results: list[TopologyResult] = []
    for name, store, cluster in TOPOLOGIES:
        console.print(f"measuring {name} ...")
        results.append(await measure(name, store, cluster, levels, seconds))
    baseline = results[0].best or 1.0
    figures: dict[str, Any] = {
        "topologies": [{**asdict(result), "best_sagas_per_s": result.best} for result in results],
        "ratios_vs_sqlite": {result.name: round(result.best / baseline, 3) for result in results},
    }
    return results, figures


def topology_table(results: list[TopologyResult]) -> Table:
    table = Table(title="Happy-path sagas/s by topology (best closed-loop level)")
    table.add_column("topology")
    table.add_column("sagas/s", justify="right")
    table.add_column("p50 ms at best", justify="right")
    table.add_column("vs sqlite", justify="right")
    baseline = results[0].best or 1.0
    for result in results:
        best = max(result.closed, key=lambda loop: loop.throughput)
        table.add_row(
            result.name,
            f"{result.best:.0f}",
            f"{best.latency_ms['p50']}",
            f"{result.best / baseline:.2f}",
        )
    return table


async def run_topology_bench(args: argparse.Namespace) -> int:
    console = Console()
    results, figures = await measure_topologies(console, args.quick)
    console.print(topology_table(results))
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    figures = {
        "command": "choreo bench --topologies" + (" --quick" if args.quick else "")
    } | figures
    (output / "topologies.json").write_text(json.dumps(figures, indent=2))
    console.print(f"figures: {output / 'topologies.json'}")
    return 0
