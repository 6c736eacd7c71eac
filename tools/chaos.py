"""``choreo chaos``: seeded fault injection while orders flow, then the invariants.

While N mixed orders are placed, a seeded schedule injects: SIGKILLs of random services
(restarted after a random pause), kills at the worst moments (a process re-armed with a crash
point: after commit before ack, after publish before marking sent, after a command's commit),
broker crashes and restarts on the same file store, broker freezes (SIGSTOP), duplicates (same
``Nats-Msg-Id``, and new ones; with a short ``duplicate_window``, replays after it passed),
poison on the event subjects, bad gRPC requests (oversized, near the broker's max_payload,
with a NUL), and slow/failing fake providers. Beyond crashes, it also injects: a provider down
for longer than the retry budget (the step gives up, voids what the provider may have taken and
emits its failure event), a hung provider (calls time out), a message that crashes its consumer
on every delivery (the server's delivery count ends it), and a broker outage long enough to
fill the client's reconnect buffer many times. Then it waits (bounded) for every saga to end
and checks invariants 1-6 through the gRPC APIs, the streams and the providers' ledgers, and
that every saga was final within the saga deadline plus a stated bound.

An operator acts on the dead letters while the faults run, as the README tells one to
(``choreo.dlq``'s ``replay_letter`` and ``discard``, every ``operator_interval_s``): an alarm
(a step that gave up and could not confirm its compensation, e.g. a void whose reply was lost)
is replayed as soon as it is seen, so also while its provider is still down and right after a
compensation the provider took; poison, and the letters of the message that crashes its
consumer, are discarded; of the other give-ups (compensated), a seeded share is replayed and
another discarded. Once the faults are over and the system is quiet, every alarm still open is
replayed, until none is left. Replaying a letter at any point must never break invariants 1-4
(design invariant 10): the audit afterwards covers every replay. The report counts the
operator's actions (``operator_replay``, ``operator_discard``, by kind) among the faults.

The report lists faults by kind, sagas by final state, dead letters by kind (poison must equal
exactly what was injected) and every violation; any violation makes the exit status non-zero.
A happy order cancelled by its provider's failure event while that provider was down or hung
(the failure published inside the fault window, or within the retry budget after it) is an
outcome of that fault, whatever reason the step's dead letter gives.

The services run on SQLite files (the default) or, with ``store="postgres"``, on fresh
databases of their own on a Postgres server (``<name>_chaos_<random>_<service>``, dropped by
:meth:`Chaos.cleanup`), where the quiescence check reads every service's outbox.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import nats
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.table import Table

from choreo import checkpoints, contracts, dlq, grpc_errors, sealing, subjects
from choreo.cluster import seed_urls
from choreo.envelope import H_CORRELATION_ID, H_ID, H_MSG_ID, H_SUBJECT, H_TIME, H_TYPE
from choreo.errors import ConfigurationError
from choreo.redact import redact_url
from choreo.settings import RuntimeSettings
from choreo.streamread import StoredMessage, read_stream
from choreo.streams import CONTEXTS
from choreo.testing import envelope_for
from services import payment_token
from services.audit import audit, read_ledgers, wait_for_quiescence
from services.catalog import load_catalog
from services.registry import SERVICE_NAMES
from services.settings import REPO_ROOT, SagaSettings
from services.system import (
    DEFAULT_POSTGRES_URL,
    STORES,
    System,
    SystemConfig,
    drop_postgres_databases,
)
from services.workload import (
    Placed,
    SagaPath,
    bad_requests,
    mixed_paths,
    place_all,
    request_for,
    wait_until_final,
)
from shop.order.v1 import events_pb2 as order_events
from shop.order.v1 import order_service_pb2 as order_pb
from shop.order.v1 import order_service_pb2_grpc as order_grpc
from tools import faults

CHAOS_CATALOG = REPO_ROOT / "catalog" / "chaos.json"
CRASH_CUSTOMER = "cust-crash"  # its PaymentCompleted kills shipping on every delivery
CRASH_EVENT = "shop.payment.v1.PaymentCompleted"
CRASH_POINTS = {
    "kill_after_commit_before_ack": checkpoints.AFTER_COMMIT_BEFORE_ACK,
    "kill_after_publish_before_mark": checkpoints.AFTER_PUBLISH_BEFORE_MARK,
}
POISON_SUBJECTS = (
    "shop.order.v1.OrderCreated",
    "shop.payment.v1.PaymentCompleted",
    "shop.shipping.v1.ShipmentCreated",
)


# Orders the run places itself in each phase of a schema migration (v1+v2, then v2 alone).
ORDERS_PER_MIGRATION_PHASE = 4

# A request larger than this may be refused by its size alone (RESOURCE_EXHAUSTED, before it
# is read: no valid request comes near it); a smaller one must be refused naming its field.
REFUSED_BY_SIZE_ABOVE = 16 * 1024

# Orders placed at the start of each provider outage.
PROBES_PER_OUTAGE = 3

# Who the run's operator actions are recorded as (a letter's resolution names its actor).
OPERATOR = "chaos-operator"
# Each provider's failure event: a cancellation it caused, and the moment it did.
FAILURE_EVENTS = {
    "payment": "shop.payment.v1.PaymentFailed",
    "shipping": "shop.shipping.v1.ShippingFailed",
}
CANCELLED_BY: dict[int, str] = {
    order_events.CANCELLATION_REASON_PAYMENT_FAILED: "payment",
    order_events.CANCELLATION_REASON_SHIPPING_FAILED: "shipping",
}
# Rounds of "replay every open alarm, wait for quiet" once the faults are over.
FINAL_ALARM_ROUNDS = 3


@dataclass
class ChaosConfig:
    sagas: int = 300
    concurrency: int = 16
    seed: int = 7
    kills: int = 5
    broker_restarts: int = 1
    broker_pauses: int = 1
    duplicates: int = 20
    poison: int = 6
    bad_requests: int = 11
    duplicate_window_s: float = 120.0
    provider_failure_rate: float = 0.05
    provider_latency_ms: int = 2
    # Faults beyond crashes (issue "every saga ends").
    provider_outages: int = 1  # a provider down for longer than the retry budget
    hung_providers: int = 1  # a provider whose calls never answer, for a while
    crash_messages: int = 1  # an order whose PaymentCompleted kills shipping on every delivery
    long_broker_outages: int = 1  # a broker down long enough to fill the client buffer
    # A rolling OrderCreated v1 -> v2 migration mid-run, inventory killed inside the window.
    schema_migrations: int = 1
    # The payment token's key pair rotated mid-run, with tokens sealed for the old key in flight.
    key_rotations: int = 1
    long_outage_s: float = 8.0
    nats_pending_size: int = 16 * 1024  # small, so a long outage fills it many times over
    saga_deadline_s: float = 150.0
    # Every saga must be final within the deadline plus this (the deadline scan, compensations).
    final_bound_s: float = 60.0
    duration_s: float = 240.0
    # Deliberately broken builds: the run must then report violations.
    disable_inbox: bool = False
    ack_before_handling: bool = False
    # Where the services keep their state: "sqlite" files, or "postgres" databases on the
    # server of ``database_url`` (fresh ones, named after its database).
    store: str = "sqlite"
    database_url: str = DEFAULT_POSTGRES_URL
    # Connections per service process on Postgres: kills and restarts briefly overlap a dead
    # process's connections with its successor's, on a server other runs share.
    postgres_pool_size: int = 5
    # An operator replaying and discarding dead letters while the faults run (see the module
    # docstring), every this many seconds; the shares of compensated give-ups replayed and
    # discarded (the rest is left open, as a busy operator would).
    operator_actions: bool = True
    # Deliveries a step that gave up may use to compensate before it raises an alarm (the
    # runtime's default is 30): few, so a provider outage ends in alarms, some after the
    # provider took the void or the cancel and lost the reply, which the operator replays
    # while the outage still runs. The outage lasts past them.
    give_up_attempts: int = 3
    operator_interval_s: float = 1.5
    operator_replay_share: float = 0.35
    operator_discard_share: float = 0.35


def chaos_database_url(base_url: str) -> str:
    """``base_url`` with a database prefix no other run uses (the system appends
    ``_<service>``), so a chaos run never audits, or drops, anyone else's data."""
    parts = urlsplit(base_url)
    prefix = parts.path.strip("/") or "choreo"
    return urlunsplit(parts._replace(path=f"/{prefix}_chaos_{uuid.uuid4().hex[:8]}"))


@dataclass
class ChaosReport:
    faults: Counter[str] = field(default_factory=Counter)
    final_states: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    expected_dead_letters: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    gave_up: Counter[str] = field(default_factory=Counter)
    alarms_replayed: Counter[str] = field(default_factory=Counter)
    # Orders whose alarm the operator replayed after the provider had taken the compensation
    # (a void or a carrier cancel whose reply was lost), by provider.
    replayed_after_lost_compensation: dict[str, list[str]] = field(default_factory=dict)
    operator_refusals: list[str] = field(default_factory=list)
    # Every operator action: "<action> <seq> <service>:<reason> <event type> order <id>".
    operator_log: list[str] = field(default_factory=list)
    # Every alarm filed (a step that could not confirm its compensation), by service:reason.
    alarms: Counter[str] = field(default_factory=Counter)
    caught_by_provider_faults: int = 0
    gave_up_under_kills: int = 0
    max_saga_s: float = 0.0
    sagas: int = 0
    seconds: float = 0.0
    store: str = "sqlite"

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "store": self.store,
            "sagas": self.sagas,
            "seconds": round(self.seconds, 1),
            "faults": dict(self.faults),
            "final_states": dict(self.final_states),
            "dead_letters": dict(self.dead_letters),
            "expected_dead_letters": dict(self.expected_dead_letters),
            "recovery_after_broker_restart_s": self.recovery_s,
            "gave_up_and_compensated": dict(self.gave_up),
            "alarms": dict(self.alarms),
            "alarms_replayed": dict(self.alarms_replayed),
            "replayed_after_lost_compensation": self.replayed_after_lost_compensation,
            "operator_replays_refused": self.operator_refusals,
            "operator_actions": self.operator_log,
            "orders_cancelled_by_provider_faults": self.caught_by_provider_faults,
            "orders_cancelled_by_give_ups_under_kills": self.gave_up_under_kills,
            "max_saga_seconds": round(self.max_saga_s, 1),
            "violations": self.violations,
        }


def _published_at(headers: dict[str, str]) -> datetime:
    return datetime.fromisoformat(headers[H_TIME].replace("Z", "+00:00"))


def subscribers(subject: str) -> list[str]:
    return [edge.service for edge in contracts.choreography() if edge.trigger == subject]


class Chaos:
    def __init__(self, config: ChaosConfig, console: Console) -> None:
        self.config = config
        self.console = console
        self.rng = random.Random(config.seed)
        self.report = ChaosReport()
        self.workdir = Path(tempfile.mkdtemp(prefix="choreo-chaos-"))
        env = {
            "CHOREO_ACK_WAIT_S": "4",
            "CHOREO_MAX_DELIVERIES": "10",
            "CHOREO_BACKOFF_BASE_S": "0.1",
            "CHOREO_BACKOFF_MAX_S": "2",
            "CHOREO_DUPLICATE_WINDOW_S": str(config.duplicate_window_s),
            "CHOREO_PAYMENT_FAILURE_RATE": str(config.provider_failure_rate),
            "CHOREO_SHIPPING_FAILURE_RATE": str(config.provider_failure_rate),
            "CHOREO_PAYMENT_LATENCY_MS": str(config.provider_latency_ms),
            "CHOREO_SHIPPING_LATENCY_MS": str(config.provider_latency_ms),
            "CHOREO_SEED": str(config.seed),
            "CHOREO_NATS_PENDING_SIZE": str(config.nats_pending_size),
            "CHOREO_SAGA_DEADLINE_S": str(config.saga_deadline_s),
            "CHOREO_GIVE_UP_ATTEMPTS": str(config.give_up_attempts),
            # Ample stock of everyday items, so only SKU-RARE runs out, however long the run.
            "CHOREO_CATALOG": str(CHAOS_CATALOG),
        }
        if config.disable_inbox:
            env["CHOREO_FAULT_DISABLE_INBOX"] = "1"
        if config.ack_before_handling:
            env["CHOREO_FAULT_ACK_FIRST"] = "1"
        # Every service runs with the fault harness installed: it acts at the runtime's named
        # checkpoints when the environment arms it (tools/faults.py), and nowhere else.
        system_config = SystemConfig(
            data_dir=self.workdir, grpc_base_port=None, env=env, service_argv=faults.SERVE_ARGV
        )
        if config.store not in STORES:
            raise ConfigurationError(
                f"store {config.store!r} is not known: use --store sqlite or --store postgres"
            )
        if config.store == "postgres":
            system_config.store = "postgres"
            system_config.database_url = chaos_database_url(config.database_url)
            env["CHOREO_DATABASE_POOL_SIZE"] = str(config.postgres_pool_size)
        self.system = System(system_config)
        self.report.store = config.store
        self.completions: list[float] = []
        self.restarts_at: list[float] = []
        # (start, end) of each provider outage or hang: orders in flight then may be cancelled.
        self.provider_fault_windows: list[tuple[float, float]] = []
        # (provider, start, end) of the same, on the wall clock the events' ce-time uses.
        self.provider_fault_wall: list[tuple[str, float, float]] = []
        # The operator's own dice (the faults' schedule keeps its seeded sequence), and the
        # letters it has decided on.
        self.operator_rng = random.Random(config.seed * 7919 + 1)
        self.decided: set[int] = set()
        self.crash_orders: set[str] = set()
        self.extra_orders: list[Placed] = []
        # Services a fault is taking down and up on purpose, counted: two faults may overlap on one.
        self.busy: Counter[str] = Counter()
        self.stub: order_grpc.OrderServiceAsyncStub | None = None
        self.base_env: dict[str, dict[str, str]] = {}

    # --- faults ---------------------------------------------------------------------------

    async def kill_random_service(self) -> None:
        assert self.system.supervisor is not None
        name = self.rng.choice(SERVICE_NAMES)
        self.busy[name] += 1
        try:
            self.system.supervisor.kill(name)
            self.report.faults["sigkill"] += 1
            await asyncio.sleep(self.rng.uniform(0.2, 1.5))
            await self._restart(name)
        finally:
            self.busy[name] -= 1

    async def kill_at_worst_moment(self) -> None:
        """Re-arm a service with a crash point; it kills itself there; start it clean."""
        assert self.system.supervisor is not None
        kind, point = self.rng.choice(sorted(CRASH_POINTS.items()))
        if self.config.ack_before_handling:
            kind, point = "kill_after_ack_before_commit", faults.AFTER_ACK_BEFORE_COMMIT
        name = self.rng.choice(SERVICE_NAMES)
        if self.rng.random() < 0.3:
            kind, point, name = (
                "kill_after_command_commit",
                checkpoints.AFTER_COMMIT_BEFORE_PUBLISH,
                "order",
            )
        managed = self.system.supervisor.processes[name]
        self.busy[name] += 1
        clean_env = dict(managed.spec.env)
        managed.spec.env = {
            **clean_env,
            "CHOREO_CRASH_AT": point,
            "CHOREO_CRASH_AFTER": str(self.rng.randint(0, 5)),
        }
        # Start it armed without waiting for health: it may reach the point during start-up.
        managed.terminate()
        managed.start()
        deadline = time.monotonic() + 8
        while managed.alive() and time.monotonic() < deadline:  # noqa: ASYNC110 - a child process
            await asyncio.sleep(0.05)
        managed.spec.env = clean_env
        if not managed.alive():
            self.report.faults[kind] += 1
        else:
            self.report.faults[f"{kind}_not_reached"] += 1
        await asyncio.sleep(self.rng.uniform(0.1, 1.0))
        try:
            await self._restart(name)
        finally:
            self.busy[name] -= 1

    def restart_bound_s(self) -> float:
        """How long a service is restarted before that counts as a violation. A message that
        crashes its consumer is delivered up to max_deliveries times, ack_wait apart, and a
        restart in between may die on it again (sooner when start-up is slow, as on a loaded
        Postgres): restarting must outlast that, as an operator's supervisor does."""
        env = self.system.config.env
        deliveries = int(env.get("CHOREO_MAX_DELIVERIES", "10"))
        return deliveries * float(env.get("CHOREO_ACK_WAIT_S", "4")) + 30.0

    async def _restart(self, name: str) -> None:
        assert self.system.supervisor is not None
        deadline = time.monotonic() + self.restart_bound_s()
        attempt = 0
        while True:
            try:
                await self.system.supervisor.restart(name, timeout=30)
                return
            except (RuntimeError, TimeoutError) as exc:
                attempt += 1
                if time.monotonic() >= deadline:
                    self.report.violations.append(
                        f"service {name} could not be restarted ({attempt} attempts): {exc!r}"
                    )
                    return
                await asyncio.sleep(min(2.0, 0.5 * attempt))

    async def restart_broker(self) -> None:
        broker = self.system.broker
        assert broker is not None
        broker.kill()  # a crash, not a clean stop; the file store survives
        self.report.faults["broker_crash_restart"] += 1
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        await asyncio.to_thread(broker.start)
        self.restarts_at.append(time.monotonic())
        await self.place_probe_order()

    async def pause_broker(self) -> None:
        broker = self.system.broker
        assert broker is not None
        broker.pause()
        self.report.faults["broker_sigstop"] += 1
        await asyncio.sleep(self.rng.uniform(1.5, 3.0))
        broker.resume()

    async def inject_duplicates(self, js: Any) -> None:
        """Re-publish delivered events: with the same Nats-Msg-Id (the broker drops it inside
        the window) and with a new one (only the inbox stands between it and a double effect)."""
        # Recent events only: inside the duplicate window the broker must drop the copy.
        recent_after = datetime.now(UTC) - timedelta(seconds=self.config.duplicate_window_s / 2)
        messages = [
            m for m in await self._some_events(js) if _published_at(m.headers) > recent_after
        ]
        for message in self.rng.sample(messages, min(len(messages), 4)):
            same = await js.publish(message.subject, message.data, headers=message.headers)
            self.report.faults["duplicate_same_msg_id"] += 1
            if not same.duplicate:
                self.report.violations.append(
                    f"broker accepted a same-Nats-Msg-Id duplicate of {message.headers[H_ID]}"
                    " inside the duplicate window"
                )
            headers = {
                **message.headers,
                H_MSG_ID: f"{message.headers[H_ID]}:dup:{self.rng.random()}",
            }
            await js.publish(message.subject, message.data, headers=headers)
            self.report.faults["duplicate_new_msg_id"] += 1

    async def replay_after_window(self, js: Any) -> None:
        """With a short duplicate_window: wait it out, then re-send with the same msg id."""
        messages = await self._some_events(js)
        chosen = self.rng.sample(messages, min(len(messages), 4))
        await asyncio.sleep(self.config.duplicate_window_s + 1.5)
        for message in chosen:
            ack = await js.publish(message.subject, message.data, headers=message.headers)
            self.report.faults["replay_after_dedup_window"] += 1
            if ack.duplicate:
                self.report.faults["replay_after_dedup_window_dropped_by_broker"] += 1

    async def _some_events(self, js: Any) -> list[StoredMessage]:
        """Events of a random context that has some (early in a run, some have none yet)."""
        for context in self.rng.sample(CONTEXTS, len(CONTEXTS)):
            stream = subjects.stream_name(context)
            messages = [
                m
                for m in await read_stream(js, stream)
                # Not our own poison: re-sending it would file dead letters nobody injected.
                if m.headers.get(H_ID) and not m.headers.get(H_SUBJECT, "").startswith("poison-")
            ]
            if messages:
                return messages
        return []

    async def inject_poison(self, js: Any, index: int) -> None:
        subject = self.rng.choice(POISON_SUBJECTS)
        cls = contracts.event_classes()[subject]
        envelope = envelope_for(cls(), aggregate_id=f"poison-{index}", source="chaos")
        headers = envelope.to_headers()
        kind = ("undecodable_body", "unknown_event_type", "unsupported_schema_version")[index % 3]
        body = b""
        if kind == "undecodable_body":
            body = b"\x0a\xff\xff\xff\x0f"
        elif kind == "unknown_event_type":
            headers[H_TYPE] = subject.rsplit(".", 1)[0] + ".Teleported"
        else:
            headers[H_TYPE] = subject.replace(".v1.", ".v7.")
        await js.publish(envelope.subject, body, headers=headers)
        self.report.faults[f"poison_{kind}"] += 1
        for service in subscribers(subject):
            self.report.expected_dead_letters[f"{service}:{kind}"] += 1

    async def send_bad_requests(self, stub: order_grpc.OrderServiceAsyncStub) -> None:
        for what, request, expected_field in bad_requests()[: self.config.bad_requests]:
            try:
                await stub.PlaceOrder(request, timeout=10)
                self.report.violations.append(f"invariant 6: bad request accepted: {what}")
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    continue  # the order service is down right now; not a verdict
                # Larger than any valid request: it may be refused by its size, unread.
                by_size = (
                    exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    and request.ByteSize() > REFUSED_BY_SIZE_ABOVE
                )
                fields = [f for f, _ in grpc_errors.field_violations(exc)]
                named = exc.code() == grpc.StatusCode.INVALID_ARGUMENT and expected_field in fields
                if not (by_size or named):
                    self.report.violations.append(
                        f"invariant 6: {what}: {exc.code().name} naming {fields}"
                    )
            self.report.faults["bad_grpc_request"] += 1

    def _runtime_settings(self) -> RuntimeSettings:
        env = self.system.config.env
        return RuntimeSettings(
            max_deliveries=int(env["CHOREO_MAX_DELIVERIES"]),
            backoff_base_s=float(env["CHOREO_BACKOFF_BASE_S"]),
            backoff_max_s=float(env["CHOREO_BACKOFF_MAX_S"]),
        )

    def retry_budget_s(self) -> float:
        """How long a step keeps retrying before it gives up, with this run's settings."""
        settings = self._runtime_settings()
        return sum(settings.backoff(d) for d in range(1, settings.max_deliveries))

    def give_up_budget_s(self) -> float:
        """How long a step that gave up keeps trying to compensate before it raises an alarm."""
        settings = self._runtime_settings()
        return self.config.give_up_attempts * settings.backoff(settings.max_deliveries)

    async def _restart_with(self, name: str, extra_env: dict[str, str]) -> None:
        assert self.system.supervisor is not None
        managed = self.system.supervisor.processes[name]
        managed.spec.env = {**self.base_env[name], **extra_env}
        await self._restart(name)

    async def provider_outage(self, index: int) -> None:
        """A provider fails every call (half of them after taking the charge or booking, as a
        lost answer) for longer than the retry budget and the give-up's attempts: the step must
        give up cleanly, or raise an alarm when it cannot compensate (the operator replays
        those, some while the outage still runs)."""
        name = ("payment", "shipping")[index % 2]
        self.busy[name] += 1
        started, wall_started = time.monotonic(), time.time()
        try:
            await self._restart_with(name, {f"CHOREO_{name.upper()}_FAILURE_RATE": "1.0"})
            # Orders meet the outage for sure, even if the run's load has ebbed by now: without
            # them, a run whose sagas all passed the step before the outage shows nothing
            # about giving up. Several, so that (with every call failing, half after it was
            # taken) some give-up's compensation is taken with its reply lost.
            await self._place_probe_orders(PROBES_PER_OUTAGE)
            # Past their retries and their give-ups' attempts, with room for a slow start:
            # their alarms are filed, and replayed, while the provider is still down.
            await asyncio.sleep(self.retry_budget_s() + self.give_up_budget_s() + 8.0)
            await self._restart_with(name, {})
        finally:
            self.busy[name] -= 1
        self.provider_fault_windows.append((started, time.monotonic()))
        self.provider_fault_wall.append((name, wall_started, time.time()))
        self.report.faults[f"provider_outage_{name}"] += 1

    async def schema_migration(self, js: Any) -> None:
        """A rolling OrderCreated migration in the middle of the run: the order service
        publishes v1 and v2 of every order for a while, and inventory (which handles both) is
        killed inside that window with both versions of some orders in flight; then v2 alone,
        then v1 again. Every order must still reserve, charge and ship once (the audit)."""
        assert self.system.supervisor is not None
        self.busy.update({"order", "inventory"})
        try:
            await self._restart_with("order", {"CHOREO_ORDER_CREATED_VERSIONS": "1,2"})
            await self._place_probe_orders(ORDERS_PER_MIGRATION_PHASE)
            await asyncio.sleep(3.0)
            self.system.supervisor.kill("inventory")
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))
            await self._restart("inventory")
            await asyncio.sleep(3.0)
            await self._restart_with("order", {"CHOREO_ORDER_CREATED_VERSIONS": "2"})
            await self._place_probe_orders(ORDERS_PER_MIGRATION_PHASE)
            await asyncio.sleep(3.0)
            await self._restart_with("order", {})
        finally:
            self.busy.subtract({"order", "inventory"})
        self.report.faults["schema_migration_window"] += 1
        # What the window put on the wire: orders told in v2, and in both versions at once.
        v2 = await self._orders_with(js, "shop.order.v2.OrderCreated")
        v1 = await self._orders_with(js, "shop.order.v1.OrderCreated")
        self.report.faults["schema_migration_orders_in_v2"] += len(v2)
        self.report.faults["schema_migration_orders_in_both"] += len(v2 & v1)

    async def _place_probe_orders(self, count: int) -> None:
        """Orders that meet a phase of the run for sure, whatever the load is doing then."""
        for _ in range(count):
            await self.place_probe_order()

    async def _orders_with(self, js: Any, event_type: str) -> set[str]:
        """The order ids (the subject's last token) that have ``event_type`` in the stream."""
        stream = subjects.stream_name(subjects.context_of(event_type))
        messages = await read_stream(js, stream, subjects.event_type_filter(event_type))
        return {message.subject.rsplit(".", 1)[-1] for message in messages}

    async def rotate_payment_key(self) -> None:
        """The payment token's key pair rotated with orders in flight, as the README says: payment
        first (the new key, the old one retired), then the order service (the new public key).
        An order sealed for the old key is placed between the two steps; every later restart
        keeps the new keys."""
        old_private = Path(
            self.base_env["payment"].get(payment_token.PRIVATE_KEY_SETTING)
            or payment_token.default_key_files(self.workdir.resolve())[0]
        )
        new_private = self.workdir / "rotated-secrets" / "payment-token-key.pem"
        new_public = new_private.with_name("payment-token-public.pem")
        sealing.write_keypair(new_private, new_public)
        self.busy.update({"order", "payment"})
        try:
            self.base_env["payment"].update(
                {
                    payment_token.PRIVATE_KEY_SETTING: str(new_private),
                    payment_token.RETIRED_KEYS_SETTING: str(old_private),
                }
            )
            await self._restart_with("payment", {})
            await self.place_probe_order()  # still sealed for the old key
            self.base_env["order"][payment_token.PUBLIC_KEY_SETTING] = str(new_public)
            await self._restart_with("order", {})
            await self.place_probe_order()  # sealed for the new key
        finally:
            self.busy.subtract({"order", "payment"})
        self.report.faults["payment_key_rotation"] += 1

    async def hang_provider(self, index: int) -> None:
        """A provider whose calls never answer (10 minutes of latency) for a few seconds."""
        name = ("shipping", "payment")[index % 2]
        self.busy[name] += 1
        started, wall_started = time.monotonic(), time.time()
        try:
            await self._restart_with(name, {f"CHOREO_{name.upper()}_LATENCY_MS": "600000"})
            await asyncio.sleep(6.0)
            await self._restart_with(name, {})
        finally:
            self.busy[name] -= 1
        self.provider_fault_windows.append((started, time.monotonic()))
        self.provider_fault_wall.append((name, wall_started, time.time()))
        self.report.faults[f"hung_provider_{name}"] += 1

    async def place_crashing_order(self, stub: order_grpc.OrderServiceAsyncStub) -> None:
        """An order whose PaymentCompleted kills the shipping process on every delivery (it is
        armed with CHOREO_CRASH_ON_CUSTOMER from the start). The broker counts the deliveries;
        past the limit shipping gives up without running the handler, cancels any booking by
        its key and emits ShippingFailed, so the order is cancelled and refunded."""
        request = request_for(SagaPath.HAPPY, 0, self.rng)
        request.customer_id = CRASH_CUSTOMER
        request.shipping_address.country_code = "US"
        response = await stub.PlaceOrder(request, timeout=10)
        order_id = response.order.order_id
        self.crash_orders.add(order_id)
        self.extra_orders.append(Placed(order_id, SagaPath.HAPPY, time.monotonic()))
        self.report.faults["message_that_crashes_its_consumer"] += 1

    async def long_broker_outage(self) -> None:
        """The broker down for longer than the client's reconnect buffer lasts."""
        broker = self.system.broker
        assert broker is not None
        broker.kill()
        self.report.faults["broker_outage_long"] += 1
        await asyncio.sleep(self.config.long_outage_s)
        await asyncio.to_thread(broker.start)
        self.restarts_at.append(time.monotonic())
        await self.place_probe_order()

    async def place_probe_order(self) -> None:
        """One more happy order right after a broker restart (the time to recover is measured
        to the first saga that completes after it, and there must be one) or at the start of a
        provider outage (its step gives up: it is cancelled, or its alarm is replayed) or of a
        schema migration's phase."""
        assert self.stub is not None
        request = request_for(SagaPath.HAPPY, len(self.extra_orders), self.rng)
        for attempt in range(10):
            try:
                response = await self.stub.PlaceOrder(request, timeout=10)
                break
            except grpc.aio.AioRpcError:
                if attempt == 9:
                    raise
                await asyncio.sleep(0.5)
        self.extra_orders.append(Placed(response.order.order_id, SagaPath.HAPPY, time.monotonic()))

    async def watchdog(self, stopping: asyncio.Event) -> None:
        """Restart a service that died when no fault was taking it down: the crashing message
        kills shipping on purpose; any other unplanned death is a violation."""
        assert self.system.supervisor is not None
        while not stopping.is_set():
            await asyncio.sleep(0.3)
            for name in self.system.supervisor.dead():
                # Checked again for each name: restarting an earlier one takes seconds, in
                # which a fault may have brought this one back up and left it (a CI run counted
                # notification, restarted by its kill, as an unplanned death that way).
                if self.busy[name] > 0 or self.system.supervisor.processes[name].alive():
                    continue
                if name == "shipping" and self.crash_orders:
                    self.report.faults["crashed_by_the_message"] += 1
                else:
                    managed = self.system.supervisor.processes[name]
                    self.report.violations.append(
                        f"service {name} died with no fault injected ({managed.exit_summary()})"
                    )
                self.busy[name] += 1
                try:
                    await self._restart(name)
                finally:
                    self.busy[name] -= 1

    # --- the operator ---------------------------------------------------------------------

    async def operator_during_faults(self, js: Any, stopping: asyncio.Event) -> None:
        """An operator at the dead-letter console while the faults run: every
        ``operator_interval_s`` it looks at the open letters and acts on the new ones."""
        interval = self.config.operator_interval_s
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)
            if stopping.is_set():
                return
            try:
                # Bounded: with the broker down, the console waits, then looks again.
                async with asyncio.timeout(max(10.0, 4 * interval)):
                    await self.operator_pass(js)
            except Exception as exc:  # the broker is down or restarting right now
                self.report.faults["operator_pass_failed"] += 1
                self.console.print(f"[yellow]operator pass failed: {exc!r}[/yellow]")

    async def operator_pass(self, js: Any) -> None:
        try:
            letters = await dlq.list_dead_letters(js)
        except NotFoundError:
            return  # no letter was ever filed
        for letter in letters:
            if not letter.is_open or letter.is_parked_notice or letter.seq in self.decided:
                continue
            action, kind = self.operator_choice(letter)
            self.decided.add(letter.seq)
            if action == "replay":
                await self.operator_replay(js, letter, kind)
            elif action == "discard":
                await self.operator_discard(js, letter, kind)

    def operator_choice(self, letter: dlq.DeadLetter) -> tuple[str, str]:
        """(action, kind of letter): what an operator does with a letter it sees first."""
        if (
            letter.correlation_id in self.crash_orders
            and letter.service == "shipping"
            and letter.event_type == CRASH_EVENT
        ):
            # Replaying it would crash the consumer again: not before a fix.
            return "discard", "crashes_its_consumer"
        if letter.alarm:
            # The compensation's outcome is unknown: replay it now (the provider may well
            # still be down, or have taken it and lost the reply).
            return "replay", "alarm"
        if not letter.compensated:
            return "discard", "poison"  # no handler can take it; nothing to replay
        draw = self.operator_rng.random()
        if draw < self.config.operator_replay_share:
            return "replay", "give_up"
        if draw < self.config.operator_replay_share + self.config.operator_discard_share:
            return "discard", "give_up"
        return "leave", "give_up"

    async def operator_replay(
        self, js: Any, letter: dlq.DeadLetter, kind: str, *, after_faults: bool = False
    ) -> bool:
        """Replay one letter; False when replay refused it (recorded) or it failed."""
        taken = self.compensation_taken(letter) if letter.alarm else ""
        when = "after the faults" if after_faults else "while faults run"
        try:
            await dlq.replay_letter(js, letter.seq, by=OPERATOR, note=f"chaos: {kind}, {when}")
        except dlq.ReplayRefused as exc:
            self.report.faults["operator_replay_refused"] += 1
            self.report.operator_refusals.append(
                f"{letter.seq} ({letter.service}:{letter.reason}, order"
                f" {letter.correlation_id}): {exc}"
            )
            return False
        except Exception:
            self.decided.discard(letter.seq)  # the broker is away: look again next pass
            self.report.faults["operator_action_failed"] += 1
            return False
        self._log("replay" if not after_faults else "replay-after-faults", letter, kind, taken)
        if after_faults:
            self.report.alarms_replayed[f"{letter.service}:{letter.reason}"] += 1
        else:
            self.report.faults["operator_replay"] += 1
            self.report.faults[f"operator_replay_{kind}"] += 1
        if taken:
            self.report.faults[f"operator_replay_after_lost_{taken}"] += 1
            self.report.replayed_after_lost_compensation.setdefault(taken, []).append(
                letter.correlation_id
            )
        return True

    async def operator_discard(self, js: Any, letter: dlq.DeadLetter, kind: str) -> None:
        try:
            await dlq.discard(js, letter.seq, note=f"chaos: {kind}", by=OPERATOR)
        except dlq.AlreadyResolved:
            return
        except Exception:
            self.decided.discard(letter.seq)
            self.report.faults["operator_action_failed"] += 1
            return
        self._log("discard", letter, kind)
        self.report.faults["operator_discard"] += 1
        self.report.faults[f"operator_discard_{kind}"] += 1

    def _log(self, action: str, letter: dlq.DeadLetter, kind: str, taken: str = "") -> None:
        lost = f", after a lost {taken}" if taken else ""
        self.report.operator_log.append(
            f"{action} {letter.seq} ({kind}{lost}) {letter.service}:{letter.reason}"
            f" {letter.event_type} order {letter.correlation_id or '-'}"
        )

    def compensation_taken(self, letter: dlq.DeadLetter) -> str:
        """ "void" or "carrier_cancel" when the provider's own ledger already holds the
        compensation of the alarm's order: the provider took it and its reply was lost (the
        step alarmed because no attempt was answered). "" otherwise, or if unreadable."""
        saga = SagaSettings(catalog_path=CHAOS_CATALOG)
        where = {
            "payment": (saga.payment_ledger.name, "voids", "void"),
            "shipping": (saga.shipping_ledger.name, "cancellations", "carrier_cancel"),
        }.get(letter.service)
        if where is None or not letter.correlation_id:
            return ""
        ledger, table, what = where
        try:
            conn = sqlite3.connect(f"file:{self.workdir / ledger}?mode=ro", uri=True, timeout=5)
            try:
                row = conn.execute(
                    f"SELECT 1 FROM {table} WHERE order_id = ? LIMIT 1",
                    (letter.correlation_id,),
                ).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return ""
        return what if row else ""

    async def replay_alarms(self, js: Any, databases: dict[str, str]) -> None:
        """Once the faults are over and the system is quiet, the operator replays every alarm
        still open (one whose replay during the faults failed again is open as a new letter),
        waits for quiet, and looks again, a few rounds; an alarm left open is a violation."""
        for _ in range(FINAL_ALARM_ROUNDS):
            open_alarms = [
                letter
                for letter in await self._open_letters(js)
                if letter.alarm and not letter.is_parked_notice
            ]
            if not open_alarms:
                return
            for letter in open_alarms:
                await self.operator_replay(js, letter, "alarm", after_faults=True)
            await wait_for_quiescence(js, self.workdir, timeout_s=60, databases=databases)
        for letter in await self._open_letters(js):
            if letter.alarm:
                self.report.violations.append(
                    f"alarm {letter.seq} ({letter.service}:{letter.reason}, order"
                    f" {letter.correlation_id}) still open after {FINAL_ALARM_ROUNDS} rounds of"
                    f" replays: {letter.detail}"
                )

    async def _open_letters(self, js: Any) -> list[dlq.DeadLetter]:
        try:
            return [letter for letter in await dlq.list_dead_letters(js) if letter.is_open]
        except NotFoundError:
            return []

    # --- verdicts --------------------------------------------------------------------------

    def in_provider_fault(self, provider: str, at: float) -> bool:
        """Whether a failure event of ``provider`` published at ``at`` (wall clock) belongs to
        one of its outages or hangs: inside it, or within the retry budget (and the give-up's
        own attempts) after it, when the last attempts made inside it run out."""
        after = self.retry_budget_s() + self.give_up_budget_s() + 20.0
        return any(
            name == provider and start - 1.0 <= at <= end + after
            for name, start, end in self.provider_fault_wall
        )

    def accept_outcome(
        self,
        item: Placed,
        gave_up_on: set[str],
        failed_at: dict[tuple[str, str], float] | None = None,
    ) -> str | None:
        """Why an order's final state is wrong, or None when it is what the run allows.
        ``gave_up_on``: the sagas in which a step gave up and compensated (its letter says so).
        ``failed_at``: when each (provider, order)'s failure event was published (wall clock)."""
        cancelled_by = item.cancellation_reason
        cancelled = item.status == order_pb.ORDER_STATUS_CANCELLED
        # Cancelled by a provider's failure event published while that provider was down or
        # hung: the fault's outcome, whatever reason (or none) the step's letter gives.
        provider = CANCELLED_BY.get(cancelled_by)
        at = (failed_at or {}).get((provider, item.order_id)) if provider else None
        by_provider_fault = bool(
            cancelled and provider and at is not None and self.in_provider_fault(provider, at)
        )
        if item.order_id in self.crash_orders:
            if cancelled and cancelled_by == order_events.CANCELLATION_REASON_SHIPPING_FAILED:
                return None
            if by_provider_fault:  # a payment outage caught it before shipping could crash
                self.report.caught_by_provider_faults += 1
                return None
            return f"the order whose message crashes shipping ended as {item.status}"
        if item.status == item.path.expected_status:
            return None
        if by_provider_fault:
            self.report.caught_by_provider_faults += 1
            return None
        # A step that gave up (a message delivered more often than allowed while its process
        # kept being killed, say) cancels the order, as designed: accepted when the saga's
        # dead letters show that give-up, or the deadline.
        if cancelled and cancelled_by == order_events.CANCELLATION_REASON_DEADLINE_EXCEEDED:
            if any(item.placed_at <= end for _, end in self.provider_fault_windows):
                self.report.caught_by_provider_faults += 1
            else:
                self.report.gave_up_under_kills += 1
            return None
        if cancelled and provider and item.order_id in gave_up_on:
            self.report.gave_up_under_kills += 1
            return None
        status = order_pb.OrderStatus.Name(order_pb.OrderStatus.ValueType(item.status))
        reason = order_events.CancellationReason.Name(
            order_events.CancellationReason.ValueType(cancelled_by)
        )
        return f"({item.path}) ended as {status} ({reason})"

    # --- the run --------------------------------------------------------------------------

    def schedule(self, spread_s: float) -> list[tuple[float, str]]:
        c = self.config
        kinds = (
            ["kill"] * (c.kills - c.kills // 3)
            + ["worst_moment"] * (c.kills // 3)
            + ["broker_restart"] * c.broker_restarts
            + ["broker_pause"] * c.broker_pauses
            + ["duplicates"] * max(1, c.duplicates // 8)
            + ["poison"] * c.poison
            + ["bad_requests"] * 2
            + ["provider_outage"] * c.provider_outages
            + ["hung_provider"] * c.hung_providers
            + ["crash_message"] * c.crash_messages
            + ["long_broker_outage"] * c.long_broker_outages
            + ["schema_migration"] * c.schema_migrations
            + ["key_rotation"] * c.key_rotations
        )
        if c.duplicate_window_s < 30:
            kinds.append("replay_after_window")
        # Broker faults land in the first two thirds, so sagas are still flowing afterwards
        # and the time to recover can be measured.
        early = {
            "broker_restart",
            "broker_pause",
            "long_broker_outage",
            "provider_outage",
            "hung_provider",
            "crash_message",
            "schema_migration",
            "key_rotation",
        }
        return sorted(
            (self.rng.uniform(0.5, spread_s * (0.66 if kind in early else 1.0)), kind)
            for kind in kinds
        )

    async def inject(
        self, js: Any, stub: order_grpc.OrderServiceAsyncStub, spread_s: float
    ) -> None:
        started = time.monotonic()
        poison_index = outage_index = hang_index = 0
        # Faults that take a service or the broker away run one at a time, like incidents.
        for at, kind in self.schedule(spread_s):
            delay = started + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                if kind == "kill":
                    await self.kill_random_service()
                elif kind == "worst_moment":
                    await self.kill_at_worst_moment()
                elif kind == "broker_restart":
                    await self.restart_broker()
                elif kind == "broker_pause":
                    await self.pause_broker()
                elif kind == "duplicates":
                    await self.inject_duplicates(js)
                elif kind == "replay_after_window":
                    await self.replay_after_window(js)
                elif kind == "poison":
                    await self.inject_poison(js, poison_index)
                    poison_index += 1
                elif kind == "bad_requests":
                    await self.send_bad_requests(stub)
                elif kind == "provider_outage":
                    await self.provider_outage(outage_index)
                    outage_index += 1
                elif kind == "hung_provider":
                    await self.hang_provider(hang_index)
                    hang_index += 1
                elif kind == "crash_message":
                    await self.place_crashing_order(stub)
                elif kind == "long_broker_outage":
                    await self.long_broker_outage()
                elif kind == "schema_migration":
                    await self.schema_migration(js)
                elif kind == "key_rotation":
                    await self.rotate_payment_key()
            except Exception as exc:  # a fault that could not be injected is reported, not fatal
                self.report.faults[f"{kind}_failed"] += 1
                self.console.print(f"[yellow]could not inject {kind}: {exc!r}[/yellow]")

    async def run(self) -> ChaosReport:
        began = time.monotonic()
        await self.system.start()
        try:
            await self._run()
        finally:
            self.system.stop()
            self.report.seconds = time.monotonic() - began
        return self.report

    async def _run(self) -> None:
        c = self.config

        async def quiet(_: Exception) -> None:
            """The broker is restarted on purpose; reconnecting is the point."""

        nc = await nats.connect(
            seed_urls(self.system.nats_url),  # one URL, or a cluster's seeds
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            error_cb=quiet,
        )
        js = nc.jetstream()

        async def completed(_: Any) -> None:
            self.completions.append(time.monotonic())

        await nc.subscribe(
            subjects.event_type_filter("shop.notification.v1.NotificationSent"), cb=completed
        )
        paths = mixed_paths(c.sagas, seed=c.seed)
        await self.arm_processes()
        channel = grpc.aio.insecure_channel(self.system.addresses["order"])
        stub: order_grpc.OrderServiceAsyncStub = order_grpc.OrderServiceStub(channel)
        self.stub = stub
        watching = asyncio.Event()
        watchdog = asyncio.create_task(self.watchdog(watching))
        try:
            # Orders arrive at a steady rate over the fault window, so every fault (a crash
            # point needs traffic to be reached) lands while sagas are in flight.
            spread = max(20.0, c.sagas / 15)
            placing = asyncio.create_task(
                place_all(
                    stub, paths, concurrency=c.concurrency, seed=c.seed, rate=c.sagas / spread
                )
            )
            injecting = asyncio.create_task(self.inject(js, stub, spread))
            faults_over = asyncio.Event()
            operator = asyncio.create_task(self.operator_during_faults(js, faults_over))
            if not c.operator_actions:
                faults_over.set()
            try:
                placed: list[Placed] = await placing
                await injecting
            finally:
                faults_over.set()
                await operator
            placed += self.extra_orders
            self.report.sagas = len(placed)
            self.console.print(f"placed {len(placed)} orders; waiting for quiescence ...")
            stuck = await wait_until_final(stub, placed, timeout=c.duration_s)
            stuck_ids = {item.order_id for item in stuck}
            for item in stuck:
                self.report.violations.append(f"invariant 1: order {item.order_id} never ended")
            gave_up_on = {
                letter.headers.get(H_CORRELATION_ID, "")
                for letter in await dlq.list_dead_letters(js)
                if letter.compensated
            }
            failed_at = await failure_times(js)
            for item in placed:
                if item.order_id in stuck_ids:
                    continue
                wrong = self.accept_outcome(item, gave_up_on, failed_at)
                if wrong:
                    self.report.violations.append(f"invariant 1: order {item.order_id} {wrong}")
            # Every service's outbox, in its SQLite file or its Postgres database.
            databases = self.system.database_urls
            await wait_for_quiescence(js, self.workdir, timeout_s=60, databases=databases)
            await self.replay_alarms(js, databases)
            # The last reactions land.
            await wait_for_quiescence(js, self.workdir, timeout_s=60, databases=databases)
            saga = SagaSettings(catalog_path=CHAOS_CATALOG)
            audited = await audit(
                js=js,
                addresses=self.system.addresses,
                catalog=load_catalog(saga.catalog_path),
                ledgers=await read_ledgers(self.workdir, saga),
            )
            durations = await saga_durations(js)
        finally:
            watching.set()
            await watchdog
            await channel.close()
            letters = await dlq.list_dead_letters(js)
            await nc.close()
        self.report.final_states = audited.final_states
        for order_id, took in durations.items():
            self.report.max_saga_s = max(self.report.max_saga_s, took)
            if took > c.saga_deadline_s + c.final_bound_s:
                self.report.violations.append(
                    f"invariant 1: order {order_id} took {took:.0f}s from OrderCreated to its"
                    f" last event, more than the deadline {c.saga_deadline_s:.0f}s"
                    f" + {c.final_bound_s:.0f}s"
                )
        self.report.violations += [str(v) for v in audited.violations]
        poison = [x for x in letters if not x.compensated and not x.alarm]
        self.report.dead_letters = Counter(f"{x.service}:{x.reason}" for x in poison)
        self.report.gave_up = Counter(f"{x.service}:{x.reason}" for x in letters if x.compensated)
        self.report.alarms = Counter(f"{x.service}:{x.reason}" for x in letters if x.alarm)
        if self.report.dead_letters != self.report.expected_dead_letters:
            self.report.violations.append(
                f"dead letters {dict(self.report.dead_letters)} != injected poison"
                f" {dict(self.report.expected_dead_letters)}"
            )
        self.report.recovery_s = [self._recovery(at) for at in self.restarts_at]

    async def arm_processes(self) -> None:
        """Remember each service's environment; arm shipping for the crashing message."""
        assert self.system.supervisor is not None
        for name, managed in self.system.supervisor.processes.items():
            self.base_env[name] = dict(managed.spec.env)
        if self.config.crash_messages:
            self.base_env["shipping"].update(
                {
                    "CHOREO_CRASH_ON_CUSTOMER": CRASH_CUSTOMER,
                    "CHOREO_CRASH_ON_TYPE": CRASH_EVENT,
                }
            )
            await self._restart_with("shipping", {})

    async def cleanup(self) -> None:
        """Remove what the run left: its data folder and, on Postgres, its databases."""
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.config.store == "postgres":
            await drop_postgres_databases(self.system.database_urls.values())

    def _recovery(self, restarted_at: float) -> float:
        after = [t for t in self.completions if t >= restarted_at]
        return round(after[0] - restarted_at, 2) if after else -1.0


async def failure_times(js: Any) -> dict[tuple[str, str], float]:
    """When each order's first PaymentFailed / ShippingFailed was published (``ce-time``, wall
    clock), by (provider, order id)."""
    found: dict[tuple[str, str], float] = {}
    for provider, event_type in FAILURE_EVENTS.items():
        stream = subjects.stream_name(subjects.context_of(event_type))
        for message in await read_stream(js, stream, subjects.event_type_filter(event_type)):
            saga = message.headers.get(H_CORRELATION_ID)
            if not saga or H_TIME not in message.headers:
                continue
            at = _published_at(message.headers).timestamp()
            found[provider, saga] = min(found.get((provider, saga), at), at)
    return found


async def saga_durations(js: Any) -> dict[str, float]:
    """Per saga, seconds from its first event to its last (the events' own ``ce-time``): how
    long it really took to end, whenever anyone looked."""
    first: dict[str, datetime] = {}
    last: dict[str, datetime] = {}
    for context in CONTEXTS:
        for message in await read_stream(js, subjects.stream_name(context)):
            saga = message.headers.get(H_CORRELATION_ID)
            if not saga or H_TIME not in message.headers:
                continue
            at = _published_at(message.headers)
            first[saga] = min(first.get(saga, at), at)
            last[saga] = max(last.get(saga, at), at)
    return {saga: (last[saga] - first[saga]).total_seconds() for saga in first}


def print_report(console: Console, report: ChaosReport) -> None:
    table = Table(title="Chaos run")
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, count in sorted(report.faults.items()):
        table.add_row(f"fault: {name}", str(count))
    for name, count in sorted(report.final_states.items()):
        table.add_row(f"sagas: {name}", str(count))
    for name, count in sorted(report.dead_letters.items()):
        table.add_row(f"dead letters: {name}", str(count))
    for name, count in sorted(report.gave_up.items()):
        table.add_row(f"gave up and compensated: {name}", str(count))
    for name, count in sorted(report.alarms.items()):
        table.add_row(f"alarms: {name}", str(count))
    for name, count in sorted(report.alarms_replayed.items()):
        table.add_row(f"alarm replayed after the faults: {name}", str(count))
    console.print(table)
    for what, orders in sorted(report.replayed_after_lost_compensation.items()):
        console.print(f"replayed after a lost {what}: orders {', '.join(orders)}")
    for refusal in report.operator_refusals[:20]:
        console.print(f"[yellow]replay refused: {refusal}[/yellow]")
    console.print(
        f"orders cancelled by provider faults: {report.caught_by_provider_faults};"
        f" by give-ups under kills: {report.gave_up_under_kills};"
        f" longest saga: {report.max_saga_s:.1f}s"
    )
    console.print(f"broker restart -> first completed saga after: {report.recovery_s} s")
    for violation in report.violations[:50]:
        console.print(f"[red]{violation}[/red]")
    verdict = (
        "[green]0 violations[/green]"
        if report.ok
        else (f"[red]{len(report.violations)} violation(s)[/red]")
    )
    console.print(f"{report.sagas} sagas in {report.seconds:.0f}s: {verdict}")


async def run_chaos(args: argparse.Namespace) -> int:
    console = Console()
    config = ChaosConfig(
        sagas=args.sagas,
        concurrency=args.concurrency,
        seed=args.seed,
        kills=args.kills,
        broker_restarts=args.broker_restarts,
        duration_s=args.duration,
        duplicate_window_s=args.duplicate_window,
        disable_inbox=args.unsafe_disable_inbox,
        ack_before_handling=args.unsafe_ack_first,
    )
    store = args.store or ("postgres" if args.database_url else "sqlite")
    if args.database_url:
        if store != "postgres":
            raise ConfigurationError("--database-url is for --store postgres")
        config.database_url = args.database_url
    config.store = store
    chaos = Chaos(config, console)
    if store == "postgres":
        names = ", ".join(
            redact_url(url).rsplit("/", 1)[-1] for url in chaos.system.database_urls.values()
        )
        console.print(f"Postgres databases for this run: {names}")
    report = await run_to_report(chaos, console, keep=args.keep)
    if args.output:
        args.output.write_text(json.dumps(report.as_json(), indent=2))
    return 0 if report.ok else 1


async def run_to_report(chaos: Chaos, console: Console, *, keep: bool) -> ChaosReport:
    """Run ``chaos``, clean up after it (unless ``keep``), print and return its report."""
    try:
        report = await chaos.run()
    finally:
        if keep:
            console.print(f"kept {chaos.workdir}")
        else:
            await chaos.cleanup()
    print_report(console, report)
    return report
