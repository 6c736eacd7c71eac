"""Throughput and CPU per saga of this tree against an earlier commit, in one run.

    .venv/bin/python scripts/bench_before_after.py 9026920 --pairs 4

The earlier commit is checked out in a git worktree (with its own virtualenv, made by its own
``make venv``); then the two builds run the same measurement in turns, the order alternating
from pair to pair, so that a VM that slows down or speeds up during the run weighs on both
alike. Each measurement starts the whole system of that build (embedded nats-server, five
service processes, SQLite, the default fsync, no /metrics) and places happy-path orders over
gRPC:

- a closed loop at each client level, each for ``--seconds``: sagas/s, and the CPU of every
  process (the broker included) per saga at the best level;
- an open loop at ``--rate`` sagas/s: CPU per saga when the machine is not saturated, which
  moves much less from run to run than sagas/s does.

Prints a table and the ratios (after / before, per pair and their median) and writes them to
``--output``. The measurement part runs inside each build with that build's Python, so it uses
only what both builds have (``tools.bench``, ``services.system``, ``services.workload``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


# --- the measurement, run inside one build --------------------------------------------------


async def measure(levels: list[int], seconds: float, rate: float) -> dict[str, Any]:
    import grpc
    import nats

    from services.system import System, SystemConfig
    from services.workload import SagaPath, request_for
    from shop.order.v1 import order_service_pb2_grpc as order_grpc
    from tools import bench

    workdir = Path(tempfile.mkdtemp(prefix="choreo-before-after-"))
    env = {"CHOREO_CATALOG": str(bench.BENCH_CATALOG), "CHOREO_METRICS_PORT": "0"}
    system = System(SystemConfig(data_dir=workdir, grpc_base_port=None, env=env))
    await system.start()
    try:
        assert system.supervisor is not None and system.broker is not None
        pids = {name: p.pid for name, p in system.supervisor.processes.items() if p.pid}
        pids["nats-server"] = system.broker.pid or 0
        nc = await nats.connect(system.broker.url)
        completions = bench.Completions()
        try:  # the subject scheme with the order id as the last token (later builds)
            from choreo import subjects

            done_subject = subjects.event_type_filter(bench.DONE_SUBJECT)
        except (ImportError, AttributeError):
            done_subject = bench.DONE_SUBJECT
        await nc.subscribe(done_subject, cb=completions.on_message)
        rng = random.Random(5)
        counter = iter(range(10**9))
        async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
            stub = order_grpc.OrderServiceStub(channel)

            async def start() -> str:
                request = request_for(SagaPath.HAPPY, next(counter), rng)
                return str((await stub.PlaceOrder(request, timeout=30)).order.order_id)

            await bench.closed_loop(start, completions, max(levels), 3.0)  # warm-up
            closed: list[dict[str, Any]] = []
            for level in levels:
                cpu_before, _ = bench.process_stats(pids)
                result = await bench.closed_loop(start, completions, level, seconds)
                cpu_after, _ = bench.process_stats(pids)
                by_process = {
                    name: round(
                        (cpu_after[name] - cpu_before[name]) * 1000 / max(1, result.sagas), 2
                    )
                    for name in pids
                }
                closed.append(
                    {
                        "clients": level,
                        "sagas_per_s": result.throughput,
                        "cpu_ms_per_saga": round(sum(by_process.values()), 2),
                        "cpu_ms_per_saga_by_process": by_process,
                    }
                )
            cpu_before, _ = bench.process_stats(pids)
            opened = await bench.open_loop(start, completions, rate, seconds * 2)
            cpu_after, _ = bench.process_stats(pids)
        await nc.close()
        per_process = {
            name: round((cpu_after[name] - cpu_before[name]) * 1000 / opened["sagas"], 2)
            for name in pids
        }
        best = max(closed, key=lambda level: level["sagas_per_s"])
        return {
            "closed_loop": closed,
            "best": best,
            "open_loop": {
                "rate_per_s": rate,
                "seconds": seconds * 2,
                "sagas": opened["sagas"],
                "latency_ms": opened["latency_ms"],
                "cpu_ms_per_saga": round(sum(per_process.values()), 2),
                "cpu_ms_per_saga_by_process": per_process,
            },
        }
    finally:
        system.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --- the driver ------------------------------------------------------------------------------


def prepare_before_tree(rev: str, tree: Path) -> None:
    if not (tree / ".git").exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=REPO, check=True)
    subprocess.run(["make", "venv"], cwd=tree, check=True, stdout=subprocess.DEVNULL)


def run_build(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    python = tree / ".venv" / "bin" / "python"
    command = [
        str(python),
        str(Path(__file__).resolve()),
        "--measure",
        "--levels",
        args.levels,
        "--seconds",
        str(args.seconds),
        "--rate",
        str(args.rate),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(command, cwd=tree, env=env, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def ratio(after: float, before: float) -> float:
    return round(after / before, 3) if before else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", nargs="?", help="the earlier commit (e.g. 9026920)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--levels", default="16,48", help="closed-loop client levels")
    parser.add_argument("--seconds", type=float, default=8.0, help="per closed-loop level")
    parser.add_argument("--rate", type=float, default=60.0, help="open-loop sagas/s")
    parser.add_argument("--before-tree", type=Path, help="default: a worktree in /tmp")
    parser.add_argument("--output", type=Path, default=REPO / "docs/bench/before_after.json")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",") if level.strip()]

    if args.measure:
        print(json.dumps(asyncio.run(measure(levels, args.seconds, args.rate))))
        return 0
    if not args.rev:
        parser.error("name the earlier commit to compare with, e.g. 9026920")

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console()
    before_tree = args.before_tree or Path(tempfile.gettempdir()) / f"choreo-before-{args.rev}"
    console.print(f"preparing {args.rev} in {before_tree} ...")
    prepare_before_tree(args.rev, before_tree)
    after_rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()

    pairs: list[dict[str, Any]] = []
    with Progress(console=console) as progress:
        task = progress.add_task("measuring", total=args.pairs * 2)
        for index in range(args.pairs):
            order = ("before", "after") if index % 2 == 0 else ("after", "before")
            pair: dict[str, Any] = {"order": f"{order[0]} first"}
            for build in order:
                tree = before_tree if build == "before" else REPO
                pair[build] = run_build(tree, args)
                progress.advance(task)
            pair["throughput_ratio"] = ratio(
                pair["after"]["best"]["sagas_per_s"], pair["before"]["best"]["sagas_per_s"]
            )
            pair["open_loop_cpu_ratio"] = ratio(
                pair["after"]["open_loop"]["cpu_ms_per_saga"],
                pair["before"]["open_loop"]["cpu_ms_per_saga"],
            )
            pairs.append(pair)

    table = Table(title=f"{after_rev} (after) against {args.rev} (before)")
    for column in (
        "pair",
        "before sagas/s",
        "after sagas/s",
        "after/before",
        f"CPU ms/saga at {args.rate:.0f}/s before → after",
        "after/before CPU",
    ):
        table.add_column(column, justify="right")
    for index, pair in enumerate(pairs, 1):
        table.add_row(
            f"{index} ({pair['order']})",
            f"{pair['before']['best']['sagas_per_s']:.1f}",
            f"{pair['after']['best']['sagas_per_s']:.1f}",
            f"{pair['throughput_ratio']:.2f}",
            f"{pair['before']['open_loop']['cpu_ms_per_saga']:.1f} → "
            f"{pair['after']['open_loop']['cpu_ms_per_saga']:.1f}",
            f"{pair['open_loop_cpu_ratio']:.2f}",
        )
    console.print(table)
    summary = {
        "throughput_ratio_median": statistics.median(p["throughput_ratio"] for p in pairs),
        "throughput_ratio_of_means": ratio(
            statistics.mean(p["after"]["best"]["sagas_per_s"] for p in pairs),
            statistics.mean(p["before"]["best"]["sagas_per_s"] for p in pairs),
        ),
        "open_loop_cpu_ratio_median": statistics.median(p["open_loop_cpu_ratio"] for p in pairs),
    }
    console.print(
        "after/before sagas/s: median of pairs"
        f" {summary['throughput_ratio_median']:.2f}, of the means"
        f" {summary['throughput_ratio_of_means']:.2f}; CPU per saga at"
        f" {args.rate:.0f}/s: median {summary['open_loop_cpu_ratio_median']:.2f}"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "command": "scripts/bench_before_after.py " + " ".join(sys.argv[1:]),
                "before": args.rev,
                "after": after_rev,
                "levels": levels,
                "seconds_per_level": args.seconds,
                "pairs": pairs,
                "summary": summary,
            },
            indent=2,
        )
        + "\n"
    )
    console.print(f"figures in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
