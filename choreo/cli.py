"""The ``choreo`` command: run the system, one service, or talk to it.

choreo up                      broker + five services as processes, supervised, until Ctrl-C
choreo serve SERVICE [--app M:F] one service (for supervisors and containers); --app: yours
choreo order place|get|watch|list
choreo dlq list|show|replay|discard  dead letters: filter, inspect, replay or discard
choreo dlq parked|unpark ID    outbox rows a service could never publish, and a retry
choreo flow                    the saga graph from proto/, as Mermaid
choreo status | lag | saga ID  health, lag and throughput; consumer lag; one saga's events
choreo demo | bench | chaos    the demo run, the benchmark, the chaos run
choreo console                 a web console: sagas, their timelines, dead letters, replay
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from choreo.errors import ConfigurationError
from choreo.extras import require
from choreo.ops_cli import add_ops_commands, run_health, run_secrets
from choreo.redact import redact_url

# The reference system (the five services, their contracts and tools) is not part of the
# runtime: these commands load it by name, and say how to get it when it is not installed.
REFERENCE_COMMANDS = {
    "up": ("services.cli_commands", "run_up"),
    "audit": ("services.cli_commands", "run_audit"),
    "demo": ("services.demo", "run_demo"),
    "bench": ("services.bench", "run_bench"),
    "bench --topologies": ("services.topology_bench", "run_topology_bench"),
    "bench --saga-lookup": ("services.saga_lookup_bench", "run_saga_lookup_bench"),
    "bench --profile": ("services.bench_profile", "run_profile_bench"),
    "bench --hops": ("services.hop_bench", "run_hops_bench"),
    "chaos": ("services.chaos", "run_chaos"),
    "chaos --network": ("services.netchaos", "run_network_chaos"),
    "order": ("choreo.client_cli", "run_order_command"),
    "serve": ("services.cli_commands", "build_service"),
}
# Top-level packages of the reference system; a missing one means it is not installed.
REFERENCE_PACKAGES = ("services", "shop")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("choreo")
    except PackageNotFoundError:
        return "unknown (not installed)"


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


def add_finder_options(parser: argparse.ArgumentParser, *, nats: bool = True) -> None:
    """Where the running system is: flags, else the environment, else ``<data dir>/system.json``
    written by ``choreo up``."""
    if nats:
        parser.add_argument(
            "--nats-url",
            default=None,
            help="the broker (default: env CHOREO_NATS_URL, else the one `choreo up` runs)",
        )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CHOREO_DATA_DIR", "data")),
        help="the data folder of `choreo up`, whose system.json names the running system"
        " (env CHOREO_DATA_DIR)",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


ORDER_STATUSES = ("pending", "confirmed", "shipped", "cancelled")


def _since(text: str) -> float:
    from choreo.dlq import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_letter_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service", default=None, help="the service that gave up")
    parser.add_argument("--event", default=None, help="event type, e.g. PaymentAuthorized")
    parser.add_argument("--reason", default=None, help="e.g. retries_exhausted")
    parser.add_argument("--order", default=None, metavar="ID", help="the saga's order id")
    parser.add_argument(
        "--since", type=_since, default=None, help="filed since: 30m, 2h, 7d or an ISO time"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="choreo", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

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
        default=_env_int("CHOREO_REPLICAS", 1),
        help="processes per service, sharing its durable consumers and its database"
        " (needs --store postgres; env CHOREO_REPLICAS)",
    )
    up.add_argument(
        "--cluster",
        type=int,
        default=_env_int("CHOREO_CLUSTER", 1),
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

    serve = commands.add_parser("serve", help="run one service in this process")
    serve.add_argument(
        "service", help="order, inventory, payment, shipping or notification; or yours, with --app"
    )
    serve.add_argument(
        "--app",
        default=os.environ.get("CHOREO_APP") or None,
        metavar="MODULE:FUNCTION",
        help="your service: FUNCTION(RuntimeSettings) returns its ServiceDefinition"
        " (env CHOREO_APP)",
    )

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

    dlq = commands.add_parser("dlq", help="dead letters: list, show, replay, discard")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_commands.add_parser(
        "list", help="open dead letters (--all: resolved ones too), with filters"
    )
    dlq_list.add_argument(
        "--all", action="store_true", help="also letters already replayed or discarded"
    )
    add_letter_filters(dlq_list)
    add_json_option(dlq_list)
    show = dlq_commands.add_parser(
        "show", help="one dead letter: headers, reason, error and payload as JSON"
    )
    show.add_argument("seq", type=int, help="its sequence in CHOREO_DLQ (see `dlq list`)")
    add_json_option(show)
    replay = dlq_commands.add_parser(
        "replay", help="publish a dead letter again (or every open one matching --all filters)"
    )
    replay.add_argument(
        "seq", type=int, nargs="?", help="its sequence in CHOREO_DLQ (see `dlq list`)"
    )
    replay.add_argument(
        "--all", action="store_true", help="replay every open letter matching the filters"
    )
    add_letter_filters(replay)
    replay.add_argument("--note", default="", help="why, kept with the resolution")
    discard = dlq_commands.add_parser(
        "discard", help="close a dead letter without replaying it, saying why"
    )
    discard.add_argument("seq", type=int, help="its sequence in CHOREO_DLQ (see `dlq list`)")
    discard.add_argument("--reason", required=True, help="why it needs no replay (kept)")
    for sub in (replay, discard):
        sub.add_argument(
            "--by", default=None, help="who acts (default: env CHOREO_OPERATOR, else user@host)"
        )
    for sub in (dlq_list, show, replay, discard):
        add_finder_options(sub)
    # Parked outbox rows live in the service's database (they may be too big for the broker).
    parked = dlq_commands.add_parser(
        "parked", help="outbox rows a service parked: never publishable, with the reason"
    )
    unpark = dlq_commands.add_parser(
        "unpark", help="put a parked row back in the outbox (after fixing the cause)"
    )
    unpark.add_argument("event_id", help="its event id (see `dlq parked`)")
    for sub in (parked, unpark):
        sub.add_argument(
            "--database-url",
            default=os.environ.get("CHOREO_DATABASE_URL"),
            required=not os.environ.get("CHOREO_DATABASE_URL"),
            help="the service's database (env CHOREO_DATABASE_URL)",
        )

    flow = commands.add_parser("flow", help="print the saga graph (Mermaid) read from proto/")
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

    audit = commands.add_parser(
        "audit",
        help="check invariants 1-5 on a running system: stuck sagas, missing"
        " compensations, double charges, lost events",
    )
    audit.add_argument("--nats-url", default=None, help="default: the running system's")
    audit.add_argument("--order-address", default=None, help="default: the running system's")
    audit.add_argument("--inventory-address", default=None, help="default: the running system's")
    audit.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CHOREO_DATA_DIR", "data")),
        help="where the fake providers' ledgers and system.json are (env CHOREO_DATA_DIR)",
    )
    audit.add_argument("--catalog", type=Path, default=None)
    audit.add_argument(
        "--settle-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="wait up to this long for events in flight (outboxes, unacked consumers) first",
    )

    saga = commands.add_parser("saga", help="one saga's events, rebuilt by correlation id")
    saga.add_argument("correlation_id", help="the order id (it is the saga's correlation id)")
    saga.add_argument("--mermaid", action="store_true", help="as a Mermaid sequence diagram")
    saga.add_argument(
        "--payloads", action="store_true", help="each event's payload, decoded as JSON"
    )
    add_json_option(saga)
    add_finder_options(saga)

    demo = commands.add_parser("demo", help="run the system, place a mix of orders, check")
    demo.add_argument("--orders", type=int, default=60)
    demo.add_argument("--concurrency", type=int, default=8)
    add_system_options(demo)
    demo.set_defaults(grpc_base_port=None)  # the demo takes free ports: it must just work

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
        " silenced, dropped, reset and flapped through a fault proxy (services/netchaos.py)",
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

    add_ops_commands(commands)
    from choreo.console.command import add_console_command

    add_console_command(commands)
    return parser


def _reference(command: str) -> Any:
    """The function behind a reference-system command, or a clear error when it is missing."""
    import importlib

    module_name, attribute = REFERENCE_COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not any(missing == p or missing.startswith(p + ".") for p in REFERENCE_PACKAGES):
            raise
        raise ConfigurationError(
            f"`choreo {command}` needs the reference system (the five saga services), which is"
            f" not installed here (no module {missing!r}). It runs from a checkout of the choreo"
            " repository: `make venv`, then `.venv/bin/choreo "
            f"{command}`. The runtime alone serves your own services: `choreo serve NAME --app"
            " MODULE:FUNCTION` (see docs/writing-a-service.md)."
        ) from None
    return getattr(module, attribute)


def _load_app(spec: str) -> Any:
    """``package.module:function`` -> the function (a clear error for anything else)."""
    import importlib

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"--app {spec!r} is not MODULE:FUNCTION (e.g. acme_loyalty.service:build)"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"--app {spec!r}: cannot import {module_name!r} ({exc}); install it or put it on"
            " PYTHONPATH"
        ) from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigurationError(f"--app {spec!r}: {module_name} has no function {attribute!r}")
    return function


async def _serve(args: argparse.Namespace) -> int:
    from choreo.service import ServiceDefinition, ServiceRuntime
    from choreo.settings import RuntimeSettings

    data_dir = Path(os.environ.get("CHOREO_DATA_DIR", "data"))
    runtime_settings = RuntimeSettings.from_env(
        service=args.service,
        database_url=os.environ.get(
            "CHOREO_DATABASE_URL", f"sqlite:///{data_dir / (args.service + '.db')}"
        ),
    )
    if args.app:
        # Another team's service: its composition root builds the definition from the settings.
        definition = _load_app(args.app)(runtime_settings)
        if not isinstance(definition, ServiceDefinition):
            raise ConfigurationError(f"--app {args.app!r} did not return a ServiceDefinition")
        if definition.name != args.service:
            raise ConfigurationError(
                f"--app {args.app!r} builds the service {definition.name!r}, not"
                f" {args.service!r}: serve it as `choreo serve {definition.name} --app ...`"
            )
    else:
        definition = _reference("serve")(args.service, runtime_settings)
    await ServiceRuntime(definition, runtime_settings).run_until_signal()
    return 0


async def _dlq(args: argparse.Namespace) -> int:
    from nats.js.errors import NotFoundError

    from choreo import dlq, subjects
    from choreo.status import connect_operator, operator_login

    if args.dlq_command in ("parked", "unpark"):
        return await _dlq_parked(args)
    if args.dlq_command == "replay" and (args.seq is None) == (not args.all):
        raise ConfigurationError(
            "dlq replay: give one sequence (`choreo dlq replay 12`) or --all with filters"
            " (`choreo dlq replay --all --service payment`), not both"
        )
    nc = await connect_operator(operator_login(args.nats_url, args.data_dir))
    try:
        js = nc.jetstream()
        if args.dlq_command == "list":
            try:
                letters = await dlq.find_dead_letters(
                    js, _letter_filter(args), include_resolved=args.all
                )
            except NotFoundError:
                letters = []  # no dead-letter stream yet: nothing was ever filed
            if args.json:
                print(json.dumps([dlq.letter_json(letter) for letter in letters], indent=2))
            else:
                _print_letters(letters, args.all)
            return 0
        if args.dlq_command == "replay" and args.all:
            return await _dlq_replay_all(js, args)
        try:
            if args.dlq_command == "show":
                letter = await dlq.get_dead_letter(js, args.seq)
                if args.json:
                    print(json.dumps(dlq.letter_json(letter, full=True), indent=2))
                else:
                    print(_letter_detail(letter))
            elif args.dlq_command == "discard":
                done = await dlq.discard(js, args.seq, note=args.reason, by=args.by)
                print(f"dead letter {args.seq} {done.describe()}")
            else:
                new_id = await dlq.replay_letter(js, args.seq, by=args.by, note=args.note)
                print(f"replayed dead letter {args.seq} as Nats-Msg-Id {new_id}")
        except dlq.ReplayRefused as refused:  # a notice, resolved, suspect, or source gone
            print(f"choreo: {refused}", file=sys.stderr)
            return 1
        except NotFoundError:
            print(
                f"choreo: no dead letter {args.seq} in {subjects.DLQ_STREAM}"
                " (see `choreo dlq list --all`)",
                file=sys.stderr,
            )
            return 1
    finally:
        await nc.close()
    return 0


def _letter_filter(args: argparse.Namespace) -> Any:
    from choreo.dlq import LetterFilter

    return LetterFilter(
        service=args.service,
        event=args.event,
        reason=args.reason,
        order_id=args.order,
        since=args.since,
    )


def _when(at: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_letters(letters: list[Any], include_resolved: bool) -> None:
    """One line per letter, then its full error detail indented below (never cut)."""
    print(f"{'SEQ':>6}  {'FILED (UTC)':<19}  {'SERVICE':<13} {'REASON':<27} {'EVENT':<24} ORDER")
    for letter in letters:
        flag = "  ALARM" if letter.alarm else "  compensated" if letter.compensated else ""
        flag = "  SUSPECT" + flag if letter.suspect else flag
        event = letter.event_type.rsplit(".", 1)[-1]
        print(
            f"{letter.seq:>6}  {_when(letter.dead_lettered_at):<19}  {letter.service:<13}"
            f" {letter.reason:<27} {event:<24} {letter.correlation_id or '-'}{flag}"
        )
        if letter.detail:
            print(f"{'':>8}{letter.detail}")
        for why in letter.suspicions:
            print(f"{'':>8}SUSPECT: {why}")
        if letter.source_gone:
            print(f"{'':>8}not replayable: {letter.source_gone}")
        if letter.resolution is not None:
            print(f"{'':>8}[{letter.resolution.describe()}]")
    kind = "dead letter(s)" if include_resolved else "open dead letter(s)"
    print(f"{len(letters)} {kind}")


def _letter_detail(letter: Any) -> str:
    from choreo import dlq

    status = "open" if letter.resolution is None else letter.resolution.describe()
    lines = [
        f"dead letter {letter.seq}: {status}",
        f"  service:     {letter.service}",
        f"  reason:      {letter.reason}",
        f"  event:       {letter.event_type}",
        f"  order:       {letter.correlation_id or '-'}",
        f"  subject:     {letter.subject}",
        f"  filed at:    {_when(letter.dead_lettered_at)} UTC",
        f"  deliveries:  {letter.deliveries}",
    ]
    if letter.alarm:
        lines.append("  ALARM:       nothing compensated this step; an operator must act")
    if letter.compensated:
        lines.append("  compensated: the give-up handler compensated; the saga went on")
    lines += [f"  SUSPECT:     {why}" for why in letter.suspicions]
    if letter.source_gone:
        lines.append(f"  not replayable: {letter.source_gone}")
    lines += ["error:", f"  {letter.detail or '-'}", "headers:"]
    lines += [f"  {name}: {value}" for name, value in sorted(letter.headers.items())]
    if letter.is_parked_notice:
        lines.append("payload: none (a notice: the event is parked in the service's database)")
        return "\n".join(lines)
    try:
        payload = json.dumps(dlq.decode_payload(letter.event_type, letter.body), indent=2)
        lines += [f"payload ({letter.event_type}):", payload]
    except ValueError as exc:
        lines.append(f"payload: {len(letter.body)} bytes, not decodable ({exc})")
    return "\n".join(lines)


async def _dlq_replay_all(js: Any, args: argparse.Namespace) -> int:
    """Replay every open letter matching the filters, with a progress bar on stderr."""
    from nats.js.errors import NotFoundError

    require("rich", "cli")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from choreo import dlq

    try:
        letters = await dlq.find_dead_letters(js, _letter_filter(args))
    except NotFoundError:
        letters = []
    notices = [letter for letter in letters if letter.is_parked_notice]
    letters = [letter for letter in letters if not letter.is_parked_notice]
    replayed, failed = 0, []
    with Progress(
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as progress:
        task = progress.add_task("replay", total=len(letters))
        for letter in letters:
            try:
                await dlq.replay_letter(js, letter.seq, by=args.by, note=args.note)
                replayed += 1
            except dlq.ReplayRefused as exc:  # resolved meanwhile, suspect, or source gone
                failed.append(f"  {letter.seq}: {exc}")
            progress.advance(task)
    print(f"replayed {replayed} of {len(letters)} open dead letter(s)")
    if notices:
        print(
            f"skipped {len(notices)} notice(s) of parked outbox rows (no body to replay):"
            f" {', '.join(str(n.seq) for n in notices)}; see `choreo dlq parked`"
        )
    for line in failed:
        print(line, file=sys.stderr)
    return 1 if failed else 0


async def _dlq_parked(args: argparse.Namespace) -> int:
    from choreo import dlq
    from choreo.store import open_database
    from choreo.store.schema import runtime_schema

    db = await open_database(args.database_url)
    try:
        await db.migrate(runtime_schema(db.dialect))  # idempotent: the table may be new
        if args.dlq_command == "parked":
            rows = await dlq.list_parked(db)
            for row in rows:
                print(
                    f"{row.event_id}  {row.service:<13} {row.reason:<22} {row.subject}"
                    f"  {len(row.body)} bytes  {row.detail[:80]}"
                )
            print(f"{len(rows)} parked row(s)")
            return 0
        if not await dlq.unpark(db, args.event_id):
            print(f"no parked row with event id {args.event_id}", file=sys.stderr)
            return 1
        print(f"event {args.event_id} is back in the outbox; the service's relay sends it next")
        return 0
    finally:
        await db.close()


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


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "up":
        # The system's TLS mode reaches services.system.SystemConfig through CHOREO_UP_TLS.
        os.environ["CHOREO_UP_TLS"] = args.tls or ""
        return asyncio.run(_reference("up")(args))
    data_dir = getattr(args, "data_dir", None)
    if isinstance(data_dir, Path) and args.command != "serve":
        from choreo.grpc_tls import adopt_system_tls

        # A system `choreo up --tls` runs there: its CA (and client certificate) for our calls.
        adopt_system_tls(data_dir)
    if args.command == "serve":
        from choreo import eventloop

        return eventloop.run(_serve(args))
    if args.command == "order":
        return asyncio.run(_reference("order")(args))
    if args.command == "dlq":
        return asyncio.run(_dlq(args))
    if args.command == "flow":
        return _flow(args)
    if args.command == "saga":
        return asyncio.run(_saga(args))
    if args.command == "lag":
        return asyncio.run(_lag(args))
    if args.command == "status":
        return asyncio.run(_status(args))
    if args.command == "audit":
        return asyncio.run(_reference("audit")(args))
    if args.command == "demo":
        return asyncio.run(_reference("demo")(args))
    if args.command == "bench" and args.topologies:
        return asyncio.run(_reference("bench --topologies")(args))
    if args.command == "bench" and args.profile:
        return asyncio.run(_reference("bench --profile")(args))
    if args.command == "bench" and args.hops:
        return asyncio.run(_reference("bench --hops")(args))
    if args.command == "bench" and args.saga_lookup:
        return asyncio.run(_reference("bench --saga-lookup")(args))
    if args.command == "bench":
        return asyncio.run(_reference("bench")(args))
    if args.command == "chaos" and args.network:
        return asyncio.run(_reference("chaos --network")(args))
    if args.command == "chaos":
        return asyncio.run(_reference("chaos")(args))
    if args.command == "secrets":
        return run_secrets(args)
    if args.command == "health":
        return asyncio.run(run_health(args))
    if args.command == "console":
        require("aiohttp", "console")
        from choreo.console.server import run_console

        return asyncio.run(run_console(args))
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from choreo.logs import configure_logging

        configure_logging(
            logging.INFO if args.verbose or args.command == "serve" else logging.WARNING,
            args.service if args.command == "serve" else "choreo",
        )
        code = _dispatch(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at exit
        return code
    except ConfigurationError as exc:
        if os.environ.get("CHOREO_LOG_FORMAT", "").strip().lower() == "json":
            # A service whose logs are JSON lines ends with one too.
            logging.getLogger("choreo").error("%s", redact_url(str(exc)))
        else:
            print(f"choreo: {redact_url(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `choreo flow | head`: the reader left. Point stdout at nothing so the interpreter's
        # final flush does not complain again, and end quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
