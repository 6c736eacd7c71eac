"""``choreo flow``, ``saga``, ``lag`` and ``status``: the choreography and a running system,
read from the contracts and the broker."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys

from choreo.cli.options import add_finder_options, add_json_option
from choreo.redact import redact_url


def add(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    flow = commands.add_parser(
        "flow", help="print the saga graph (Mermaid) read from the contracts"
    )
    flow.add_argument(
        "--contracts",
        action="append",
        default=[],
        metavar="PACKAGE",
        help="also read the generated code in this Python package (repeat; e.g. acme.loyalty.v1;"
        " env CHOREO_CONTRACTS)",
    )

    lag = commands.add_parser("lag", help="consumer lag: what each service has not handled yet")
    add_finder_options(lag)
    add_json_option(lag)

    status = commands.add_parser(
        "status", help="every service's health, consumer lag and throughput"
    )
    add_finder_options(status)
    add_json_option(status)

    saga = commands.add_parser("saga", help="one saga's events, rebuilt by correlation id")
    saga.add_argument(
        "correlation_id", help="the saga's correlation id (the order id in the reference system)"
    )
    saga.add_argument("--mermaid", action="store_true", help="as a Mermaid sequence diagram")
    saga.add_argument(
        "--payloads", action="store_true", help="each event's payload, decoded as JSON"
    )
    add_json_option(saga)
    add_finder_options(saga)

    flow.set_defaults(run=_flow)
    lag.set_defaults(run=lambda args: asyncio.run(_lag(args)))
    status.set_defaults(run=lambda args: asyncio.run(_status(args)))
    saga.set_defaults(run=lambda args: asyncio.run(_saga(args)))


def _flow(args: argparse.Namespace) -> int:
    from choreo import contracts

    contracts.use(*args.contracts)
    edges = contracts.choreography()
    if not edges:
        print(
            f"choreo: no choreography in the contract packages {contracts.contract_packages()}:"
            f" name the package of your generated code with --contracts or"
            f" {contracts.PACKAGES_VARIABLE}",
            file=sys.stderr,
        )
        return 1
    print(contracts.mermaid(edges, contracts.command_emits()))
    return 0


async def _saga(args: argparse.Namespace) -> int:
    from choreo import timeline
    from choreo.status import connect_operator, operator_login

    nc = await connect_operator(operator_login(args.nats_url, args.data_dir))
    try:
        view = await timeline.saga(nc.jetstream(), args.correlation_id)
    finally:
        await nc.close()
    if args.json:
        print(json.dumps(timeline.saga_json(view), indent=2))
    elif args.mermaid:
        print(timeline.render_mermaid(view.steps))
    else:
        print(
            timeline.render_text(view.steps, payloads=args.payloads, dead_letters=view.dead_letters)
        )
    return 0 if view.steps else 1


async def _lag(args: argparse.Namespace) -> int:
    from choreo.status import connect_operator, consumer_lag, operator_login

    nc = await connect_operator(operator_login(args.nats_url, args.data_dir))
    try:
        by_service = await consumer_lag(nc.jetstream())
    finally:
        await nc.close()
    consumers = sorted((c for lags in by_service.values() for c in lags), key=lambda c: c.name)
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in consumers], indent=2))
        return 0
    print(f"{'consumer':<48} {'pending':>8} {'unacked':>8} {'redelivered':>12}")
    for c in consumers:
        print(f"{c.name:<48} {c.pending:>8} {c.ack_pending:>8} {c.redelivered:>12}")
    return 0


async def _status(args: argparse.Namespace) -> int:
    from choreo.service import BrokerLoginRefused
    from choreo.status import (
        connect_operator,
        consumer_lag,
        gather_status,
        operator_login,
        read_system_file,
        status_json,
        status_table,
    )

    running = read_system_file(args.data_dir)
    login = operator_login(args.nats_url, args.data_dir)  # a bad credentials file: said, raised
    url = login.url
    lag = None
    try:
        nc = await connect_operator(login)
        try:
            lag = await consumer_lag(nc.jetstream())
        finally:
            await nc.close()
    except BrokerLoginRefused:
        raise  # the operator's to fix, not the system's state
    except Exception:
        pass  # a dead broker is part of the status: shown, not raised
    rows = await gather_status(running, lag)
    show = status_json if args.json else status_table
    print(show(rows, redact_url(url), lag is not None))
    healthy = lag is not None and all(row.health == "SERVING" for row in rows)
    return 0 if healthy else 1
