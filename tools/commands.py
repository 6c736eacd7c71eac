"""The tools' commands: ``choreo bench`` and ``choreo chaos`` (entry point group
``choreo.commands``, declared in reference/pyproject.toml)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path


def add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser("bench", help="sagas/second against the raw JetStream chain")
    bench.add_argument(
        "--quick", action="store_true", help="fewer client levels and shorter windows"
    )
    bench.add_argument("--soak", type=int, default=0, help="sagas for a memory soak")
    bench.add_argument(
        "--output",
        type=Path,
        default=Path("bench-results"),
        help="folder for the JSON figures and plots (default: bench-results)",
    )
    bench.add_argument(
        "--saga-lookup",
        type=int,
        default=0,
        metavar="EVENTS",
        help="only time `choreo saga ID` with EVENTS events in the streams (e.g. 1000000)",
    )
    bench.add_argument(
        "--topologies",
        action="store_true",
        help="only compare sagas/s on SQLite, Postgres, and Postgres with a 3-node cluster",
    )
    bench.add_argument(
        "--skip-topologies",
        action="store_true",
        help="leave out the Postgres and cluster lines (they need the local Postgres)",
    )
    bench.add_argument(
        "--profile",
        action="store_true",
        help="only profile CPU per saga and per event by layer (py-spy), saga vs naive build",
    )
    bench.add_argument(
        "--hops",
        type=float,
        default=0.0,
        metavar="RATE",
        help="only split a saga's latency hop by hop (to the handler, to the broker) at RATE/s",
    )

    bench.set_defaults(run=lambda args: asyncio.run(_bench(args)))


async def _bench(args: argparse.Namespace) -> int:
    # One command, several measurements: each option picks one, the bare command runs the full
    # benchmark.
    if args.topologies:
        from tools.topology_bench import run_topology_bench

        return await run_topology_bench(args)
    if args.profile:
        from tools.bench_profile import run_profile_bench

        return await run_profile_bench(args)
    if args.hops:
        from tools.hop_bench import run_hops_bench

        return await run_hops_bench(args)
    if args.saga_lookup:
        from tools.saga_lookup_bench import run_saga_lookup_bench

        return await run_saga_lookup_bench(args)
    from tools.bench import run_bench

    return await run_bench(args)


def add_chaos(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    chaos = commands.add_parser("chaos", help="seeded fault injection with invariant checks")
    chaos.add_argument("--sagas", type=int, default=300)
    chaos.add_argument("--concurrency", type=int, default=16)
    chaos.add_argument("--seed", type=int, default=7)
    chaos.add_argument("--kills", type=int, default=5)
    chaos.add_argument("--broker-restarts", type=int, default=1)
    chaos.add_argument("--duration", type=float, default=240.0, help="bound in seconds")
    chaos.add_argument("--output", type=Path, default=None, help="write the report as JSON")
    chaos.add_argument(
        "--duplicate-window",
        type=float,
        default=120.0,
        help="stream duplicate_window in seconds; a short one adds replays after it passed",
    )
    chaos.add_argument(
        "--unsafe-disable-inbox",
        action="store_true",
        help="a deliberately broken build (no inbox): duplicates meet only domain idempotency",
    )
    chaos.add_argument(
        "--unsafe-ack-first",
        action="store_true",
        help="a deliberately broken build (ack before handling): the run must report violations",
    )
    chaos.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default=None,
        help="the services' databases: SQLite files (default) or fresh Postgres databases",
    )
    chaos.add_argument(
        "--database-url",
        default=None,
        help="the Postgres server (implies --store postgres; default"
        " postgresql://127.0.0.1:5432/choreo); the run creates <db>_chaos_<random>_<service>"
        " databases and drops them afterwards",
    )
    chaos.add_argument(
        "--keep", action="store_true", help="keep the data folder (and Postgres databases)"
    )
    chaos.add_argument(
        "--network",
        action="store_true",
        help="network faults instead of process faults: each service's broker link cut,"
        " silenced, dropped, reset and flapped through a fault proxy (tools/netchaos.py)",
    )
    chaos.add_argument(
        "--network-faults",
        type=int,
        default=0,
        help="with --network: this many more faults, of random kinds on random services",
    )
    chaos.add_argument(
        "--network-cluster",
        type=int,
        default=1,
        metavar="NODES",
        help="with --network: a JetStream cluster of NODES broker nodes (3), with a service cut"
        " from its node and a node isolated (its routes too) among the faults",
    )

    chaos.set_defaults(run=lambda args: asyncio.run(_chaos(args)))


async def _chaos(args: argparse.Namespace) -> int:
    if args.network:
        from tools.netchaos import run_network_chaos

        return await run_network_chaos(args)
    from tools.chaos import run_chaos

    return await run_chaos(args)
