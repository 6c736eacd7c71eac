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
``--output``.

``--interleave`` measures the two builds in the same minutes instead: both systems are up at
once, each started by its own build (``--serve``), and one load generator runs windows A B B A
on them, a closed loop at the highest ``--levels`` and the open loop at ``--rate``, ``--pairs``
times. Each build's CPU per saga is read over its own windows. This VM's speed can move by half
within a minute, which whole-system turns of a minute each cannot tell from a change; windows
of a few seconds can.

The measurement part runs inside each build with that build's Python, so it uses only what
both builds have (``tools.bench``, ``services.system``, ``services.workload``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


# --- run inside one build: what both builds have -------------------------------------------


@contextlib.asynccontextmanager
async def running_system(cluster: int = 1) -> AsyncIterator[tuple[Any, dict[str, int]]]:
    """The whole system of this build (embedded broker or ``cluster`` nodes, five services,
    SQLite, the default fsync, no /metrics), and the pid of each of its processes."""
    from services.system import System, SystemConfig
    from tools import bench

    workdir = Path(tempfile.mkdtemp(prefix="choreo-before-after-"))
    env = {"CHOREO_CATALOG": str(bench.BENCH_CATALOG), "CHOREO_METRICS_PORT": "0"}
    # (``cluster`` only when asked for: older builds have no such setting.)
    nodes: dict[str, Any] = {"cluster": cluster} if cluster > 1 else {}
    system = System(SystemConfig(data_dir=workdir, grpc_base_port=None, env=env, **nodes))
    await system.start()
    try:
        assert system.supervisor is not None
        pids = {name: p.pid for name, p in system.supervisor.processes.items() if p.pid}
        cluster_nodes = getattr(system, "cluster", None)  # older builds have no clusters
        if cluster_nodes is not None:
            for index, node in enumerate(cluster_nodes.nodes):
                pids[f"nats-server-{index + 1}"] = node.pid or 0
        else:
            assert system.broker is not None
            pids["nats-server"] = system.broker.pid or 0
        yield system, pids
    finally:
        system.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def saga_load(
    nats_servers: list[str], order_address: str, **nats_options: Any
) -> AsyncIterator[tuple[Any, Any]]:
    """A starter that places happy-path orders over gRPC, and the completions it waits on."""
    import grpc
    import nats

    from services.workload import SagaPath, request_for
    from shop.order.v1 import order_service_pb2_grpc as order_grpc
    from tools import bench

    nc = await nats.connect(nats_servers, **nats_options)
    try:
        completions = bench.Completions()
        try:  # the subject scheme with the order id as the last token (later builds)
            from choreo import subjects

            done_subject = subjects.event_type_filter(bench.DONE_SUBJECT)
        except (ImportError, AttributeError):
            done_subject = bench.DONE_SUBJECT
        await nc.subscribe(done_subject, cb=completions.on_message)
        rng = random.Random(5)
        counter = iter(range(10**9))
        async with grpc.aio.insecure_channel(order_address) as channel:
            stub = order_grpc.OrderServiceStub(channel)

            async def start() -> str:
                request = request_for(SagaPath.HAPPY, next(counter), rng)
                return str((await stub.PlaceOrder(request, timeout=30)).order.order_id)

            yield start, completions
    finally:
        await nc.close()


async def measure(levels: list[int], seconds: float, rate: float) -> dict[str, Any]:
    from tools import bench

    async with running_system() as (system, pids):
        servers = [system.broker.url]
        async with saga_load(servers, system.addresses["order"]) as (start, completions):
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


async def serve(cluster: int) -> None:
    """For --interleave: this build's system, up until stdin closes; where to reach it is
    printed first, as one JSON line."""
    async with running_system(cluster) as (system, pids):
        credentials = getattr(system, "credentials_file", None)
        up = {
            "nats_url": system.nats_url,
            "credentials_file": str(credentials) if credentials else None,
            "order": system.addresses["order"],
            "pids": pids,
        }
        print(json.dumps(up), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


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


class Served:
    """A build's system started by ``--serve``, with a load generator on it."""

    def __init__(self, name: str, tree: Path, cluster: int) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": str(tree)}
        python = tree / ".venv" / "bin" / "python"
        script = str(Path(__file__).resolve())
        command = [str(python), script, "--serve", "--cluster", str(cluster)]
        self.process = subprocess.Popen(
            command, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{name}: its system did not come up (see the output above)")
        self.up: dict[str, Any] = json.loads(line)
        self.windows: list[dict[str, Any]] = []

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


async def interleave(before: Served, after: Served, args: argparse.Namespace) -> dict[str, Any]:
    """The two systems in turns (``tools.bench.take_turns``): every closed window at the
    highest level, then every open window at ``--rate``, A B B A per pair."""
    from choreo import permissions
    from tools import bench

    level = max(int(n) for n in args.levels.split(","))
    window_s = args.seconds / 2
    rounds = 2 * args.pairs
    async with contextlib.AsyncExitStack() as stack:
        lines = []
        for served in (before, after):
            options: dict[str, Any] = {}
            if served.up["credentials_file"]:
                creds = permissions.read_credentials(
                    Path(served.up["credentials_file"]), permissions.OPERATOR
                )
                options = {"user": creds.user, "password": creds.password}
            servers = served.up["nats_url"].split(",")
            load = saga_load(servers, served.up["order"], **options)
            start, completions = await stack.enter_async_context(load)
            await bench.closed_loop(start, completions, level, 3.0)  # warm-up
            result = bench.RunResult(served.name, sync_always=False)
            lines.append(bench.Line(result, start, completions, served.up["pids"]))
        closed = await bench.take_turns(
            lines, rounds, "closed", bench.closed_window, level, window_s
        )
        opened = await bench.take_turns(
            lines, rounds, "open", bench.open_window, args.rate, window_s
        )

    figures: dict[str, Any] = {}
    for served, line, closed_runs, open_runs in zip(
        (before, after), lines, closed, opened, strict=True
    ):
        served.windows = [
            {"kind": "closed", "sagas": len(latencies), "seconds": seconds}
            for latencies, seconds in closed_runs
        ] + [{"kind": "open", "sagas": len(latencies)} for latencies in open_runs]
        closed_ms = [ms for latencies, _ in closed_runs for ms in latencies]
        open_ms = [ms for latencies in open_runs for ms in latencies]

        def cpu_ms_per_saga(phase: str, sagas: int, line: Any = line) -> float:
            return round(sum(line.cpu_s[phase].values()) * 1000 / max(1, sagas), 2)

        figures[served.name] = {
            "closed_loop": {
                "clients": level,
                "sagas": len(closed_ms),
                "sagas_per_s": round(len(closed_ms) / sum(s for _, s in closed_runs), 1),
                "latency_ms": bench.percentiles(closed_ms),
                "cpu_ms_per_saga": cpu_ms_per_saga("closed", len(closed_ms)),
            },
            "open_loop": {
                "rate_per_s": args.rate,
                "sagas": len(open_ms),
                "latency_ms": bench.percentiles(open_ms),
                "cpu_ms_per_saga": cpu_ms_per_saga("open", len(open_ms)),
            },
        }
    return figures


def run_interleaved(args: argparse.Namespace, before_tree: Path, after_rev: str) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    before = Served("before", before_tree, args.cluster)
    try:
        after = Served("after", REPO, args.cluster)
        try:
            result = asyncio.run(interleave(before, after, args))
        finally:
            after.stop()
    finally:
        before.stop()
    b, a = result["before"], result["after"]
    table = Table(title=f"{after_rev} (after) against {args.rev} (before), windows in turns")
    for column in ("", "before", "after", "after/before"):
        table.add_column(column, justify="right")

    def row(label: str, get: Any) -> None:
        table.add_row(label, f"{get(b):.2f}", f"{get(a):.2f}", f"{ratio(get(a), get(b)):.2f}")

    row(
        f"sagas/s, {b['closed_loop']['clients']} clients", lambda r: r["closed_loop"]["sagas_per_s"]
    )
    row("CPU ms/saga, closed loop", lambda r: r["closed_loop"]["cpu_ms_per_saga"])
    row(f"p50 ms at {args.rate:g}/s", lambda r: r["open_loop"]["latency_ms"]["p50"])
    row(f"p99 ms at {args.rate:g}/s", lambda r: r["open_loop"]["latency_ms"]["p99"])
    row("CPU ms/saga, open loop", lambda r: r["open_loop"]["cpu_ms_per_saga"])
    console.print(table)
    write_figures(args, after_rev, {"seconds_per_window": args.seconds / 2, **result})
    console.print(f"figures in {args.output}")
    return 0


def write_figures(args: argparse.Namespace, after_rev: str, figures: dict[str, Any]) -> None:
    """``figures`` in ``--output``, under the command and the two builds' commits."""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    command = "scripts/bench_before_after.py " + " ".join(sys.argv[1:])
    heading = {"command": command, "before": args.rev, "after": after_rev}
    args.output.write_text(json.dumps({**heading, **figures}, indent=2) + "\n")


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
    parser.add_argument(
        "--interleave", action="store_true", help="both systems up at once, windows in turns"
    )
    parser.add_argument(
        "--cluster", type=int, default=1, help="with --interleave: broker nodes (3: R3 streams)"
    )
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",") if level.strip()]

    if args.measure:
        print(json.dumps(asyncio.run(measure(levels, args.seconds, args.rate))))
        return 0
    if args.serve:
        asyncio.run(serve(args.cluster))
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
    if args.interleave:
        return run_interleaved(args, before_tree, after_rev)

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
    figures = {
        "levels": levels,
        "seconds_per_level": args.seconds,
        "pairs": pairs,
        "summary": summary,
    }
    write_figures(args, after_rev, figures)
    console.print(f"figures in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
