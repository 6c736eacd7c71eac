"""How the command line finds a running system, and ``choreo status``.

``choreo up`` writes ``<data dir>/system.json`` once every service is healthy and removes it
when it stops: the broker URL (credentials masked: the file holds no secrets), each process's
gRPC and ``/metrics`` address, the pid of ``up`` and, with ``--secure``, the *path* of the
broker's credentials file (mode 0600; never its content). Operator commands read it when no
``--nats-url`` / ``--address`` is given, so ``choreo lag`` just works next to ``choreo up``,
secured or not: every one of them connects through ``connect_operator``.

``choreo status`` puts together, per service process: its gRPC health, its consumers' lag as
the broker counts it (not yet delivered, delivered and not acked), what it has handled and
published, and the alarms it filed (from its ``/metrics``: ``choreo_alarms_total`` by reason
and the orders they name), one ``ALARM`` line per process and reason below the table, so an
alarm is seen even when the log's rate limit dropped its line.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from choreo.errors import ConfigurationError
from choreo.extras import require
from choreo.grpc_tls import open_channel
from choreo.permissions import OPERATOR, Credentials, read_credentials
from choreo.redact import redact_url

SYSTEM_FILE = "system.json"


@dataclass(frozen=True)
class RunningSystem:
    nats_url: str
    grpc: dict[str, str]  # process name -> host:port
    metrics: dict[str, str]  # process name -> host:port of /metrics
    pid: int = 0  # of `choreo up`
    # `choreo up --secure`: where the broker's credentials file is ("" for an open broker).
    nats_credentials_file: str = ""

    def address_of(self, service: str) -> str:
        if service not in self.grpc:
            raise ConfigurationError(f"the running system has no {service} service")
        return self.grpc[service]


def write_system_file(data_dir: Path, running: RunningSystem) -> Path:
    path = data_dir / SYSTEM_FILE
    data = asdict(running)
    data["nats_url"] = redact_url(running.nats_url)  # never a password on disk
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    temporary.replace(path)  # readers never see half a file
    return path


def remove_system_file(data_dir: Path) -> None:
    (data_dir / SYSTEM_FILE).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not recorded: trust the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


def read_system_file(data_dir: Path) -> RunningSystem:
    """The system ``choreo up`` runs from ``data_dir``, or a message saying nothing runs."""
    path = data_dir / SYSTEM_FILE
    hint = (
        "start it with `choreo up` (or pass --data-dir of the running one), or name the"
        " broker and services with --nats-url / --address"
    )
    try:
        data = json.loads(path.read_text())
        running = RunningSystem(
            nats_url=str(data["nats_url"]),
            grpc=dict(data["grpc"]),
            metrics=dict(data.get("metrics", {})),
            pid=int(data.get("pid", 0)),
            nats_credentials_file=str(data.get("nats_credentials_file", "")),
        )
    except FileNotFoundError:
        raise ConfigurationError(
            f"no running system found: {path} does not exist; {hint}"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"{path} is unreadable ({exc!r}); {hint}") from None
    if not _alive(running.pid):
        raise ConfigurationError(
            f"no running system found: {path} names `choreo up` pid {running.pid}, which is"
            f" gone (a crash leaves the file behind); {hint}"
        )
    return running


def resolve_address(flag: str | None, env: str, service: str, data_dir: Path) -> str:
    """--address, else the environment variable ``env``, else the running system's."""
    return flag or os.environ.get(env) or read_system_file(data_dir).address_of(service)


# --- how operator commands log in to the broker ---

CREDENTIALS_FILE_VARIABLE = "CHOREO_NATS_CREDENTIALS_FILE"
USER_VARIABLE = "CHOREO_NATS_USER"


@dataclass(frozen=True)
class OperatorLogin:
    """The broker an operator command talks to, and who it logs in as (None: no login)."""

    url: str
    credentials: Credentials | None


def operator_login(nats_url_flag: str | None, data_dir: Path) -> OperatorLogin:
    """Where the broker is and how to log in, for ``saga``, ``dlq``, ``lag``, ``status``,
    ``audit`` and the console alike.

    The broker: ``--nats-url``, else ``CHOREO_NATS_URL``, else the running system's. The login:
    user ``CHOREO_NATS_USER`` (default ``operator``) from ``CHOREO_NATS_CREDENTIALS_FILE``, else
    from the credentials file the running system records, but only when its broker is the one
    used: the operator's password is never sent to a broker named on the command line."""
    named = nats_url_flag or os.environ.get("CHOREO_NATS_URL")
    path = os.environ.get(CREDENTIALS_FILE_VARIABLE, "")
    origin = CREDENTIALS_FILE_VARIABLE
    if named:
        url = named
    else:
        running = read_system_file(data_dir)
        url = running.nats_url
        if not path and running.nats_credentials_file:
            path, origin = running.nats_credentials_file, str(data_dir / SYSTEM_FILE)
    if not path:
        return OperatorLogin(url, None)
    user = os.environ.get(USER_VARIABLE) or OPERATOR
    try:
        credentials = read_credentials(Path(path), user)
    except ConfigurationError as exc:
        message = f"{exc} (the path comes from {origin})"
        if CREDENTIALS_FILE_VARIABLE not in str(exc):
            message += (
                f"; set {CREDENTIALS_FILE_VARIABLE} to the broker's credentials file"
                f" (`choreo up --secure` writes <data dir>/secrets/nats-credentials.json)"
                f" and {USER_VARIABLE} to a user in it (default {OPERATOR})"
            )
        raise ConfigurationError(message) from None
    return OperatorLogin(url, credentials)


async def connect_operator(login: OperatorLogin, client_name: str = "choreo-cli") -> Any:
    """A NATS connection for an operator tool, logged in as ``login`` says. A broker that
    refuses the login raises ``BrokerLoginRefused``, which names what to set."""
    from choreo.service import connect_nats

    return await connect_nats(login.url, client_name, credentials=login.credentials)


# --- choreo status ---


@dataclass
class ConsumerLag:
    name: str
    pending: int
    ack_pending: int
    redelivered: int


@dataclass
class ProcessStatus:
    process: str
    service: str
    grpc: str
    health: str  # SERVING, NOT_SERVING, UNREACHABLE ...
    handled: int | None = None  # None: metrics unreachable
    published: int | None = None
    consumers: list[ConsumerLag] = field(default_factory=list)
    # Alarm dead letters the process filed: reason -> count, and reason -> the orders named.
    alarms: dict[str, int] = field(default_factory=dict)
    alarmed_orders: dict[str, list[str]] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return sum(c.pending for c in self.consumers)

    @property
    def ack_pending(self) -> int:
        return sum(c.ack_pending for c in self.consumers)


def service_of(process: str, services: set[str]) -> str:
    """``order-2`` (a replica) belongs to ``order``."""
    if process in services:
        return process
    base, _, number = process.rpartition("-")
    return base if number.isdigit() and base else process


async def health_of(address: str, timeout: float = 2.0) -> str:
    try:
        async with open_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return "UNREACHABLE" if exc.code() == grpc.StatusCode.UNAVAILABLE else exc.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


@dataclass
class Scraped:
    """What ``choreo status`` reads from one process's ``/metrics``."""

    handled: int = 0
    published: int = 0
    alarms: dict[str, int] = field(default_factory=dict)  # reason -> count
    alarmed_orders: dict[str, list[str]] = field(default_factory=dict)  # reason -> order ids


def parse_metrics(text: str) -> Scraped:
    require("prometheus_client", "prometheus")
    from prometheus_client.parser import text_string_to_metric_families

    scraped = Scraped()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "choreo_consumer_messages_total":
                if sample.labels.get("outcome") == "handled":
                    scraped.handled += int(sample.value)
            elif sample.name == "choreo_relay_published_total":
                scraped.published += int(sample.value)
            elif sample.name == "choreo_alarms_total":
                reason = sample.labels.get("reason", "?")
                scraped.alarms[reason] = scraped.alarms.get(reason, 0) + int(sample.value)
            elif sample.name == "choreo_alarmed_orders" and sample.value:
                reason = sample.labels.get("reason", "?")
                scraped.alarmed_orders.setdefault(reason, []).append(
                    sample.labels.get("order_id", "?")
                )
    return scraped


def scrape_metrics(address: str, timeout: float = 2.0) -> Scraped | None:
    """Counters from a service's /metrics; None if unreachable."""
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return None
    return parse_metrics(text)


def scrape_counters(address: str, timeout: float = 2.0) -> tuple[int, int] | None:
    """(events handled, events published) from a service's /metrics; None if unreachable."""
    scraped = scrape_metrics(address, timeout)
    return None if scraped is None else (scraped.handled, scraped.published)


async def consumer_lag(js: Any) -> dict[str, list[ConsumerLag]]:
    """Every choreo durable consumer's lag, by the service it belongs to."""
    from choreo import contracts, subjects

    by_service: dict[str, list[ConsumerLag]] = {}
    for context in contracts.contexts():
        for info in await js.consumers_info(subjects.stream_name(context)):
            name = info.config.durable_name or info.name
            if not name or "__" not in name:
                continue
            by_service.setdefault(name.split("__", 1)[0], []).append(
                ConsumerLag(
                    name,
                    int(info.num_pending or 0),
                    int(info.num_ack_pending or 0),
                    int(info.num_redelivered or 0),
                )
            )
    return by_service


async def gather_status(
    running: RunningSystem, lag: dict[str, list[ConsumerLag]] | None
) -> list[ProcessStatus]:
    services = set(running.grpc)
    processes = sorted(running.grpc)
    healths = await asyncio.gather(*(health_of(running.grpc[p]) for p in processes))
    counters = await asyncio.gather(
        *(
            asyncio.to_thread(scrape_metrics, running.metrics[p])
            if p in running.metrics
            else asyncio.sleep(0, None)
            for p in processes
        )
    )
    rows = []
    for process, health, counted in zip(processes, healths, counters, strict=True):
        service = service_of(process, services)
        row = ProcessStatus(process, service, running.grpc[process], health)
        if counted is not None:
            row.handled, row.published = counted.handled, counted.published
            row.alarms, row.alarmed_orders = counted.alarms, counted.alarmed_orders
        if lag is not None:
            row.consumers = sorted(lag.get(service, []), key=lambda c: c.name)
        rows.append(row)
    return rows


def status_json(rows: list[ProcessStatus], broker: str, broker_ok: bool) -> str:
    return json.dumps(
        {
            "broker": {"url": broker, "reachable": broker_ok},
            "services": [
                {**asdict(row), "pending": row.pending, "ack_pending": row.ack_pending}
                for row in rows
            ],
        },
        indent=2,
    )


def status_table(rows: list[ProcessStatus], broker: str, broker_ok: bool) -> str:
    def figure(value: int | None) -> str:
        return "?" if value is None else str(value)

    lines = [
        f"broker {broker}" + ("" if broker_ok else "  UNREACHABLE (lag unknown)"),
        f"{'service':<15} {'health':<12} {'gRPC':<21} {'consumers':>9} {'pending':>8}"
        f" {'unacked':>8} {'handled':>8} {'published':>9}",
    ]
    for row in rows:
        lag = [str(row.pending), str(row.ack_pending)] if broker_ok else ["?", "?"]
        lines.append(
            f"{row.process:<15} {row.health:<12} {row.grpc:<21}"
            f" {len(row.consumers) if broker_ok else '?':>9} {lag[0]:>8} {lag[1]:>8}"
            f" {figure(row.handled):>8} {figure(row.published):>9}"
        )
    lines += alarm_lines(rows)
    return "\n".join(lines)


def alarm_lines(rows: list[ProcessStatus]) -> list[str]:
    """One line per process and alarm reason, naming the orders (see `choreo dlq list`)."""
    lines = []
    for row in rows:
        for reason, count in sorted(row.alarms.items()):
            orders = row.alarmed_orders.get(reason, [])
            named = f": orders {', '.join(orders)}" if orders else ""
            if orders and len(orders) < count:
                named += f" (the latest {len(orders)})"
            lines.append(f"ALARM {row.process}: {count} x {reason}{named}")
    if lines:
        lines.append("an operator must look at each alarm: `choreo dlq list`")
    return lines
