"""The reference system's commands: ``choreo up``, ``demo`` and ``order``, and its checks for
``choreo audit`` (:data:`shop_audit`).

The runtime's command line does not know them: this package declares each in the entry point
group ``choreo.commands`` (reference/pyproject.toml), its five services in
``choreo.services``, so ``choreo serve order`` finds them, and its audit add-on in
``choreo.audits``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from choreo.cli.options import add_finder_options, add_json_option, env_int
from choreo.errors import ConfigurationError
from choreo.redact import redact_url
from services.system import System


async def run_up(args: argparse.Namespace) -> int:
    from choreo.supervisor import RestartPolicy
    from services.catalog import CatalogError, load_catalog
    from services.system import SystemConfig

    env = {}
    if args.catalog:
        try:
            load_catalog(args.catalog)  # fail here, not in five service logs
        except CatalogError as exc:
            raise ConfigurationError(str(exc)) from None
        env["CHOREO_CATALOG"] = str(args.catalog.resolve())
    store = args.store or ("postgres" if args.database_url else "sqlite")
    config = SystemConfig(
        data_dir=args.data_dir,
        nats_url=args.nats_url,
        nats_port=args.nats_port,
        grpc_base_port=args.grpc_base_port,
        env=env,
        store=store,
        replicas=args.replicas if args.replicas is not None else 1,
        secure=args.secure,
        cluster=args.cluster if args.cluster is not None else 1,
        sync_always=args.fsync == "always",
        tls=args.tls or "",
    )
    try:
        config.restart_policy = RestartPolicy.from_env()
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    if args.database_url:
        if store != "postgres":
            raise ConfigurationError("--database-url is for --store postgres")
        config.database_url = args.database_url
    system = System(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await system.start()
    from choreo.status import RunningSystem, remove_system_file, write_system_file

    # Operator commands find the system through this file; it goes when `up` does.
    written = write_system_file(
        args.data_dir,
        RunningSystem(
            nats_url=system.nats_url,
            grpc=dict(system.replica_addresses),
            metrics=dict(system.metrics_addresses),
            pid=os.getpid(),
            # Its path only (the file is 0600): operator commands here log in without env vars.
            nats_credentials_file=(
                str(system.credentials_file.resolve()) if system.credentials_file else ""
            ),
        ),
    )
    try:
        return await _run_up_until_stopped(args, system, stop, written)
    finally:
        # system.json goes first, while this `up` still holds the data folder: once stop()
        # lets go of it, a new `up` may write its own.
        remove_system_file(args.data_dir)
        # Whatever ended the run (Ctrl-C, a restart that failed for good, a bug), no child
        # process outlives `up`: stopping twice is harmless.
        system.stop()


async def _run_up_until_stopped(
    args: argparse.Namespace, system: System, stop: asyncio.Event, written: Path
) -> int:
    print(f"choreo is up. NATS: {redact_url(system.nats_url)}   data: {args.data_dir.resolve()}")
    databases = system.database_urls
    for process, address in system.replica_addresses.items():
        name = process.rsplit("-", 1)[0] if process not in databases else process
        # Database URLs may carry a password: printed masked, never as given.
        metrics = system.metrics_addresses.get(process, "-")
        print(
            f"  {process:<15} gRPC {address}   metrics {metrics}"
            f"   store {redact_url(databases[name])}"
        )
    if system.credentials_file is not None:
        print(
            f"  broker users: one per service; operator commands here log in through"
            f" system.json, elsewhere set CHOREO_NATS_USER=operator"
            f" CHOREO_NATS_CREDENTIALS_FILE={system.credentials_file.resolve()}"
        )
    print(f"  (written to {written}: `choreo status`, `lag`, `saga` ... find the system there)")
    print("Place an order:  choreo order place --customer c-1 --line SKU-MUG:2 --watch")
    print("Ctrl-C stops everything.")
    from choreo.logs import log_format
    from choreo.supervisor import GaveUp

    supervision_log = logging.getLogger("choreo.up")
    json_logs = log_format() == "json"

    def say(line: str, level: int = logging.WARNING) -> None:
        # With JSON logs, `up`'s own lines are JSON too (each message its own rate-limit key).
        if json_logs:
            supervision_log.log(level, line)
        else:
            print(f"  {line}" if level < logging.ERROR else f"choreo: {line}", file=sys.stderr)

    try:
        # A crashed broker or service is restarted with backoff: `up` is a small supervisor,
        # not just a launcher.
        await system.supervise(stop, say)
    except GaveUp as exc:
        say(str(exc), logging.ERROR)
        say(f"stopping everything: see the logs in {(args.data_dir / 'logs').resolve()}")
        codes = system.stop()
        say("stopped: " + ", ".join(f"{name}={code}" for name, code in codes.items()))
        return 1
    print("stopping ...")
    codes = system.stop()
    print("stopped: " + ", ".join(f"{name}={code}" for name, code in codes.items()))
    return 0


def add_system_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nats-url",
        default=os.environ.get("CHOREO_NATS_URL_EXTERNAL"),
        help="use this NATS server instead of starting an embedded one",
    )
    parser.add_argument(
        "--nats-port",
        type=int,
        default=env_int("CHOREO_NATS_PORT", 0),
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
        default=env_int("CHOREO_GRPC_BASE_PORT", 50051),
        help="gRPC port of the order service; the others follow (env CHOREO_GRPC_BASE_PORT)",
    )
    parser.add_argument(
        "--catalog", type=Path, default=None, help="catalog JSON file (env CHOREO_CATALOG)"
    )


def add_up(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = commands.add_parser("up", help="run the broker and the five services until Ctrl-C")
    add_system_options(up)
    up.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default=os.environ.get("CHOREO_STORE") or None,
        help="sqlite (one file per service, the default) or postgres (one database per"
        " service, created if missing; env CHOREO_STORE); a postgresql:// --database-url"
        " implies postgres",
    )
    up.add_argument(
        "--replicas",
        type=int,
        default=env_int("CHOREO_REPLICAS", 1),
        help="processes per service, sharing its durable consumers and its database"
        " (needs --store postgres; env CHOREO_REPLICAS)",
    )
    up.add_argument(
        "--cluster",
        type=int,
        default=env_int("CHOREO_CLUSTER", 1),
        help="embedded broker nodes: 3 runs a JetStream cluster on loopback with R3 streams"
        " (env CHOREO_CLUSTER)",
    )
    up.add_argument(
        "--fsync",
        choices=("default", "always"),
        default=os.environ.get("CHOREO_FSYNC", "default"),
        help="broker fsync policy: default (every 2 minutes; survives process crashes) or"
        " always (every write; survives power loss, slower) (env CHOREO_FSYNC)",
    )
    up.add_argument(
        "--secure",
        action="store_true",
        default=os.environ.get("CHOREO_SECURE", "") in ("1", "true"),
        help="one broker user per service with permissions from the choreography; passwords"
        " in <data dir>/secrets/nats-credentials.json (env CHOREO_SECURE=1)",
    )
    up.add_argument(
        "--tls",
        dest="tls",
        action="store_const",
        const="tls",
        default=os.environ.get("CHOREO_UP_TLS", ""),
        help="serve every gRPC API over TLS with a CA and certificates made in <data dir>/tls;"
        " the command line next to it finds them (env CHOREO_UP_TLS=tls)",
    )
    up.add_argument(
        "--mtls",
        dest="tls",
        action="store_const",
        const="mtls",
        help="--tls, and every client must present a certificate of that CA (the command line"
        " uses <data dir>/tls/client.crt) (env CHOREO_UP_TLS=mtls)",
    )
    up.add_argument(
        "--database-url",
        default=os.environ.get("CHOREO_UP_DATABASE_URL"),
        help="Postgres server and database-name prefix, e.g. postgresql://user:pw@host:5432/choreo"
        " gives choreo_order, choreo_inventory, ... (env CHOREO_UP_DATABASE_URL)",
    )

    up.set_defaults(run=_up, adopt_system_tls=False)


def _up(args: argparse.Namespace) -> int:
    # The system's TLS mode reaches services.system.SystemConfig through CHOREO_UP_TLS.
    os.environ["CHOREO_UP_TLS"] = args.tls or ""
    return asyncio.run(run_up(args))


def add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser("demo", help="run the system, place a mix of orders, check")
    demo.add_argument("--orders", type=int, default=60)
    demo.add_argument("--concurrency", type=int, default=8)
    add_system_options(demo)
    demo.set_defaults(grpc_base_port=None)  # the demo takes free ports: it must just work

    demo.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    from services.demo import run_demo

    return asyncio.run(run_demo(args))


ORDER_STATUSES = ("pending", "confirmed", "shipped", "cancelled")


def add_order(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    order = commands.add_parser("order", help="place, read and watch orders")
    order.add_argument(
        "--address",
        default=None,
        help="order service gRPC address (default: env CHOREO_ORDER_ADDRESS, else the one"
        " `choreo up` runs)",
    )
    add_finder_options(order, nats=False)
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
    listing.add_argument("--status", default=None, type=str.lower, choices=ORDER_STATUSES)
    listing.add_argument("--limit", type=int, default=20)
    add_json_option(listing)

    order.set_defaults(run=_order)


def _order(args: argparse.Namespace) -> int:
    from services.order_cli import run_order_command

    return asyncio.run(run_order_command(args))


class ShopAudit:
    """The shop's checks for ``choreo audit`` (entry point group ``choreo.audits``), beyond
    those the runtime makes of any saga from the contracts: the order service's view of each
    order, the fake providers' ledgers (no double charge or booking, a refund per cancelled
    charge), stock conservation, every reaction and every consumer (services.audit)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        shop = parser.add_argument_group("the shop (reference system)")
        shop.add_argument("--order-address", default=None, help="default: the running system's")
        shop.add_argument("--inventory-address", default=None, help="default: the running system's")
        shop.add_argument(
            "--catalog", type=Path, default=None, help="catalog JSON file (env CHOREO_CATALOG)"
        )

    async def settle(self, args: argparse.Namespace) -> bool:
        """The invariants hold for a system at rest: a compensation still in an outbox, or an
        event not yet acked, is not a violation yet. Wait for that, within a bound."""
        from choreo.status import connect_operator, operator_login
        from services.audit import wait_for_quiescence

        nc = await connect_operator(operator_login(args.nats_url, args.data_dir))
        try:
            return await wait_for_quiescence(
                nc.jetstream(), args.data_dir, timeout_s=args.settle_timeout
            )
        finally:
            await nc.close()

    async def __call__(self, args: argparse.Namespace, report: Any) -> list[Any]:
        from choreo.audit import Violation
        from choreo.status import connect_operator, operator_login, resolve_address
        from services.audit import read_ledgers, shop_audit
        from services.catalog import load_catalog
        from services.settings import SagaSettings

        saga = SagaSettings.from_env()
        if args.catalog:
            saga = dataclasses.replace(saga, catalog_path=args.catalog)
        addresses = {
            "order": resolve_address(
                args.order_address, "CHOREO_ORDER_ADDRESS", "order", args.data_dir
            ),
            "inventory": resolve_address(
                args.inventory_address, "CHOREO_INVENTORY_ADDRESS", "inventory", args.data_dir
            ),
        }
        nc = await connect_operator(operator_login(args.nats_url, args.data_dir))
        try:
            found = await shop_audit(
                js=nc.jetstream(),
                addresses=addresses,
                catalog=load_catalog(saga.catalog_path),
                ledgers=await read_ledgers(args.data_dir, saga),
            )
        finally:
            await nc.close()
        print(
            f"{found.orders} orders: "
            + ", ".join(f"{k} {v}" for k, v in found.final_states.items())
        )
        if found.cancellation_reasons:
            print(
                "cancelled for: "
                + ", ".join(f"{k} {v}" for k, v in found.cancellation_reasons.items())
            )
        return [
            Violation(f"invariant {v.invariant}", "order", v.order_id, v.message)
            for v in found.violations
        ]


#: The entry point of ``choreo.audits`` (reference/pyproject.toml).
shop_audit = ShopAudit()
