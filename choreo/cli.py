"""The ``choreo`` command: run the system, one service, or talk to it.

choreo up                      broker + five services as processes, until Ctrl-C
choreo serve SERVICE           one service (for supervisors and containers)
choreo order place|get|watch|list
choreo dlq list|replay SEQ     inspect and replay dead letters
choreo flow                    the saga graph from proto/, as Mermaid
choreo demo | bench | chaos    the demo run, the benchmark, the chaos run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from choreo.errors import ConfigurationError


def _env_int(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number") from None


def add_system_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nats-url",
        default=os.environ.get("CHOREO_NATS_URL_EXTERNAL"),
        help="use this NATS server instead of starting an embedded one",
    )
    parser.add_argument(
        "--nats-port",
        type=int,
        default=_env_int("CHOREO_NATS_PORT", 0),
        help="port of the embedded NATS server (default: a free port; env CHOREO_NATS_PORT)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CHOREO_DATA_DIR", "data")),
        help="where the SQLite files, the broker's store and logs live (env CHOREO_DATA_DIR)",
    )
    parser.add_argument(
        "--grpc-base-port",
        type=int,
        default=_env_int("CHOREO_GRPC_BASE_PORT", 50051),
        help="gRPC port of the order service; the others follow (env CHOREO_GRPC_BASE_PORT)",
    )
    parser.add_argument(
        "--catalog", type=Path, default=None, help="catalog JSON file (env CHOREO_CATALOG)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="choreo", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run the broker and the five services until Ctrl-C")
    add_system_options(up)

    serve = commands.add_parser("serve", help="run one service in this process")
    serve.add_argument("service", help="order, inventory, payment, shipping or notification")

    order = commands.add_parser("order", help="place, read and watch orders")
    order.add_argument(
        "--address",
        default=os.environ.get("CHOREO_ORDER_ADDRESS", "127.0.0.1:50051"),
        help="order service gRPC address (env CHOREO_ORDER_ADDRESS)",
    )
    order_commands = order.add_subparsers(dest="order_command", required=True)
    place = order_commands.add_parser("place", help="place an order")
    place.add_argument("--customer", required=True)
    place.add_argument(
        "--line", action="append", required=True, metavar="SKU:QTY", help="repeat per line"
    )
    place.add_argument("--currency", default="USD")
    place.add_argument("--country", default="US")
    place.add_argument("--token", default="tok_visa")
    place.add_argument("--idempotency-key", default=None, help="default: a new UUID")
    place.add_argument("--watch", action="store_true", help="then stream its status")
    get = order_commands.add_parser("get", help="show one order")
    get.add_argument("order_id")
    watch = order_commands.add_parser("watch", help="stream an order's status until final")
    watch.add_argument("order_id")
    listing = order_commands.add_parser("list", help="list orders")
    listing.add_argument("--status", default=None)
    listing.add_argument("--limit", type=int, default=20)

    dlq = commands.add_parser("dlq", help="list and replay dead letters")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_commands.add_parser("list", help="every dead letter with its reason")
    dlq_list.add_argument("--service", default=None)
    replay = dlq_commands.add_parser("replay", help="publish a dead letter again")
    replay.add_argument("seq", type=int, help="its sequence in CHOREO_DLQ (see `dlq list`)")
    for sub in (dlq_list, replay):
        sub.add_argument(
            "--nats-url",
            default=os.environ.get("CHOREO_NATS_URL", "nats://127.0.0.1:4222"),
            help="the broker (env CHOREO_NATS_URL)",
        )

    commands.add_parser("flow", help="print the saga graph (Mermaid) read from proto/")

    lag = commands.add_parser("lag", help="consumer lag: what each service has not handled yet")
    lag.add_argument(
        "--nats-url", default=os.environ.get("CHOREO_NATS_URL", "nats://127.0.0.1:4222")
    )

    audit = commands.add_parser(
        "audit",
        help="check invariants 1-5 on a running system: stuck sagas, missing"
        " compensations, double charges, lost events",
    )
    audit.add_argument(
        "--nats-url", default=os.environ.get("CHOREO_NATS_URL", "nats://127.0.0.1:4222")
    )
    audit.add_argument("--order-address", default="127.0.0.1:50051")
    audit.add_argument("--inventory-address", default="127.0.0.1:50052")
    audit.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CHOREO_DATA_DIR", "data")),
        help="where the fake providers' ledgers are (env CHOREO_DATA_DIR)",
    )
    audit.add_argument("--catalog", type=Path, default=None)

    saga = commands.add_parser("saga", help="one saga's events, rebuilt by correlation id")
    saga.add_argument("correlation_id", help="the order id (it is the saga's correlation id)")
    saga.add_argument("--mermaid", action="store_true", help="as a Mermaid sequence diagram")
    saga.add_argument(
        "--nats-url", default=os.environ.get("CHOREO_NATS_URL", "nats://127.0.0.1:4222")
    )

    demo = commands.add_parser("demo", help="run the system, place a mix of orders, check")
    demo.add_argument("--orders", type=int, default=60)
    demo.add_argument("--concurrency", type=int, default=8)
    add_system_options(demo)
    demo.set_defaults(grpc_base_port=None)  # the demo takes free ports: it must just work

    bench = commands.add_parser("bench", help="sagas/second against the raw JetStream chain")
    bench.add_argument("--quick", action="store_true")
    bench.add_argument("--soak", type=int, default=0, help="sagas for a memory soak")
    bench.add_argument("--output", type=Path, default=Path("bench-results"))

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
    chaos.add_argument("--keep", action="store_true", help="keep the data folder")
    return parser


async def _up(args: argparse.Namespace) -> int:
    from services.catalog import CatalogError, load_catalog
    from services.system import System, SystemConfig

    env = {}
    if args.catalog:
        try:
            load_catalog(args.catalog)  # fail here, not in five service logs
        except CatalogError as exc:
            raise ConfigurationError(str(exc)) from None
        env["CHOREO_CATALOG"] = str(args.catalog.resolve())
    system = System(
        SystemConfig(
            data_dir=args.data_dir,
            nats_url=args.nats_url,
            nats_port=args.nats_port,
            grpc_base_port=args.grpc_base_port,
            env=env,
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await system.start()
    print(f"choreo is up. NATS: {system.nats_url}   data: {args.data_dir.resolve()}")
    for name, address in system.addresses.items():
        print(f"  {name:<13} gRPC {address}")
    print("Place an order:  choreo order place --customer c-1 --line SKU-APPLE:2 --watch")
    print("Ctrl-C stops everything.")
    assert system.supervisor is not None
    while not stop.is_set():
        # A crashed service is restarted: `up` is a small supervisor, not just a launcher.
        for name in system.supervisor.dead():
            print(f"  {name} exited; restarting", file=sys.stderr)
            await system.supervisor.restart(name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    print("stopping ...")
    codes = system.stop()
    print("stopped: " + ", ".join(f"{name}={code}" for name, code in codes.items()))
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from choreo.service import ServiceRuntime
    from choreo.settings import RuntimeSettings
    from services.registry import SERVICE_NAMES, build
    from services.settings import SagaSettings

    if args.service not in SERVICE_NAMES:
        raise ConfigurationError(
            f"unknown service {args.service!r}: choose one of {', '.join(SERVICE_NAMES)}"
        )
    data_dir = Path(os.environ.get("CHOREO_DATA_DIR", "data"))
    runtime_settings = RuntimeSettings.from_env(
        service=args.service,
        database_url=os.environ.get(
            "CHOREO_DATABASE_URL", f"sqlite:///{data_dir / (args.service + '.db')}"
        ),
    )
    definition = build(args.service, runtime_settings, SagaSettings.from_env())
    await ServiceRuntime(definition, runtime_settings).run_until_signal()
    return 0


async def _dlq(args: argparse.Namespace) -> int:
    from choreo import dlq
    from choreo.service import connect_nats

    nc = await connect_nats(args.nats_url, "choreo-cli")
    try:
        js = nc.jetstream()
        if args.dlq_command == "list":
            letters = await dlq.list_dead_letters(js, args.service)
            for letter in letters:
                print(
                    f"{letter.seq:>6}  {letter.service:<13} {letter.reason:<28}"
                    f" {letter.subject}  {letter.detail[:80]}"
                )
            print(f"{len(letters)} dead letter(s)")
        else:
            new_id = await dlq.replay(js, args.seq)
            print(f"replayed dead letter {args.seq} as Nats-Msg-Id {new_id}")
    finally:
        await nc.close()
    return 0


async def _saga(args: argparse.Namespace) -> int:
    from choreo import timeline
    from choreo.service import connect_nats

    nc = await connect_nats(args.nats_url, "choreo-cli")
    try:
        steps = await timeline.saga_steps(nc.jetstream(), args.correlation_id)
    finally:
        await nc.close()
    print(timeline.render_mermaid(steps) if args.mermaid else timeline.render_text(steps))
    return 0 if steps else 1


async def _lag(args: argparse.Namespace) -> int:
    from choreo import subjects
    from choreo.service import connect_nats
    from choreo.streams import CONTEXTS

    nc = await connect_nats(args.nats_url, "choreo-cli")
    try:
        js = nc.jetstream()
        print(f"{'consumer':<48} {'pending':>8} {'unacked':>8} {'redelivered':>12}")
        for context in CONTEXTS:
            for info in await js.consumers_info(subjects.stream_name(context)):
                name = info.config.durable_name or info.name
                if not name or "__" not in name:
                    continue
                print(
                    f"{name:<48} {info.num_pending:>8} {info.num_ack_pending:>8}"
                    f" {info.num_redelivered:>12}"
                )
    finally:
        await nc.close()
    return 0


async def _audit(args: argparse.Namespace) -> int:
    from choreo.service import connect_nats
    from services.audit import audit, read_ledgers
    from services.catalog import load_catalog
    from services.settings import SagaSettings

    saga = SagaSettings.from_env()
    if args.catalog:
        saga = dataclasses.replace(saga, catalog_path=args.catalog)
    nc = await connect_nats(args.nats_url, "choreo-cli")
    try:
        report = await audit(
            js=nc.jetstream(),
            addresses={"order": args.order_address, "inventory": args.inventory_address},
            catalog=load_catalog(saga.catalog_path),
            ledgers=await read_ledgers(args.data_dir, saga),
        )
    finally:
        await nc.close()
    print(
        f"{report.orders} orders: " + ", ".join(f"{k} {v}" for k, v in report.final_states.items())
    )
    print(
        "dead letters: " + (", ".join(f"{k} {v}" for k, v in report.dead_letters.items()) or "none")
    )
    for violation in report.violations:
        print(violation)
    print(f"{len(report.violations)} violation(s)")
    return 0 if report.ok else 1


def _flow() -> int:
    from choreo import contracts

    print(contracts.mermaid(contracts.choreography(), contracts.command_emits()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command == "serve" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "up":
            return asyncio.run(_up(args))
        if args.command == "serve":
            return asyncio.run(_serve(args))
        if args.command == "order":
            from choreo.client_cli import run_order_command

            return asyncio.run(run_order_command(args))
        if args.command == "dlq":
            return asyncio.run(_dlq(args))
        if args.command == "flow":
            return _flow()
        if args.command == "saga":
            return asyncio.run(_saga(args))
        if args.command == "lag":
            return asyncio.run(_lag(args))
        if args.command == "audit":
            return asyncio.run(_audit(args))
        if args.command == "demo":
            from services.demo import run_demo

            return asyncio.run(run_demo(args))
        if args.command == "bench":
            from services.bench import run_bench

            return asyncio.run(run_bench(args))
        if args.command == "chaos":
            from services.chaos import run_chaos

            return asyncio.run(run_chaos(args))
    except ConfigurationError as exc:
        print(f"choreo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
