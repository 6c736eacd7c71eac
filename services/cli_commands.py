"""The reference system's commands: the composition ``choreo up`` and ``choreo audit`` need.

The ``choreo`` runtime does not import the reference services; its command line finds these
functions by name when the reference system is installed (a checkout of this repository), and
says how to get it when it is not.
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

from choreo.errors import ConfigurationError
from choreo.redact import redact_url
from choreo.service import ServiceDefinition
from choreo.settings import RuntimeSettings
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


def build_service(name: str, runtime: RuntimeSettings) -> ServiceDefinition:
    """One of the five services, for ``choreo serve NAME``."""
    from services.registry import SERVICE_NAMES, build
    from services.settings import SagaSettings

    if name not in SERVICE_NAMES:
        raise ConfigurationError(
            f"unknown service {name!r}: choose one of {', '.join(SERVICE_NAMES)}, or serve your"
            " own with --app MODULE:FUNCTION"
        )
    return build(name, runtime, SagaSettings.from_env())


async def run_audit(args: argparse.Namespace) -> int:
    from choreo.status import connect_operator, operator_login, resolve_address
    from services.audit import audit, read_ledgers, wait_for_quiescence
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
        # The invariants hold for a system at rest: a compensation still in an outbox, or an
        # event not yet acked, is not a violation yet. Wait for that, within a bound.
        if not await wait_for_quiescence(
            nc.jetstream(), args.data_dir, timeout_s=args.settle_timeout
        ):
            print(
                f"events still in flight after {args.settle_timeout:g}s (a system under load);"
                " findings about them may only be early"
            )
        report = await audit(
            js=nc.jetstream(),
            addresses=addresses,
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
