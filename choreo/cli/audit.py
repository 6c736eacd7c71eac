"""``choreo audit``: check every saga in the streams against its shape in the contracts (see
:mod:`choreo.audit`), then the checks installed packages add (``choreo.audits``)."""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import timedelta
from typing import Any

from choreo.cli.options import add_finder_options


def add(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from choreo.audit import add_ons

    audit = commands.add_parser(
        "audit",
        help="check every saga against the contracts: one final event, its closing event, its"
        " compensations, no event published twice, correlation ids (and installed add-ons)",
    )
    add_finder_options(audit)
    audit.add_argument(
        "--contracts",
        action="append",
        default=[],
        metavar="PACKAGE",
        help="also read the generated code in this Python package (repeat; env CHOREO_CONTRACTS)",
    )
    audit.add_argument(
        "--grace",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a saga whose last event is younger than this is reported as unfinished, not as"
        " a violation (default 60)",
    )
    audit.add_argument(
        "--settle-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="first wait up to this long for the services' consumers to take and ack"
        " everything (0: do not wait)",
    )
    audit.add_argument(
        "--generic-only",
        action="store_true",
        help="only the checks of the contracts, not those of installed add-ons",
    )
    for add_on in add_ons().values():
        add_arguments = getattr(add_on, "add_arguments", None)
        if callable(add_arguments):
            add_arguments(audit)
    audit.set_defaults(run=lambda args: asyncio.run(run_audit(args)))


async def _consumers_settled(js: Any, timeout_s: float) -> bool:
    """Whether every durable consumer of a service had nothing pending nor unacked at two
    looks in a row, within ``timeout_s``."""
    from choreo.status import consumer_lag

    deadline = time.monotonic() + timeout_s
    quiet = 0
    while time.monotonic() < deadline:
        lags = [lag for lags in (await consumer_lag(js)).values() for lag in lags]
        quiet = 0 if any(lag.pending or lag.ack_pending for lag in lags) else quiet + 1
        if quiet == 2:
            return True
        await asyncio.sleep(0.2)
    return False


async def run_audit(args: argparse.Namespace) -> int:
    from choreo import contracts
    from choreo.audit import add_ons, audit, run_add_on, settle
    from choreo.status import connect_operator, operator_login

    contracts.use(*args.contracts)
    shapes = contracts.sagas()
    if not shapes:
        print(
            f"choreo: no saga in the contract packages {contracts.contract_packages()}: its"
            " start event declares it with the (choreo.choreography.v1.saga) option"
        )
        return 1
    extra = {} if args.generic_only else add_ons()
    nc = await connect_operator(operator_login(args.nats_url, args.data_dir))
    try:
        js = nc.jetstream()
        if args.settle_timeout > 0:
            settled = await _consumers_settled(js, args.settle_timeout)
            for add_on in extra.values():
                settled = await settle(add_on, args) and settled
            if not settled:
                print(
                    f"events still in flight after {args.settle_timeout:g}s (a system under"
                    " load); findings about them may only be early"
                )
        report = await audit(js, grace=timedelta(seconds=args.grace))
    finally:
        await nc.close()
    for line in report.summary():
        print(line)
    for name, add_on in extra.items():
        print(f"checks of {name}:")  # the add-on may print a summary of its own
        report.violations.extend(await run_add_on(add_on, args, report))
    for violation in report.violations:
        print(violation)
    print(f"{len(report.violations)} violation(s)")
    return 0 if report.ok else 1
