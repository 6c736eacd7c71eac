"""``choreo chaos``: seeded fault injection while orders flow, then the invariants.

While N mixed orders are placed, a seeded schedule injects: SIGKILLs of random services
(restarted after a random pause), kills at the worst moments (a process re-armed with a crash
point: after commit before ack, after publish before marking sent, after a command's commit),
broker crashes and restarts on the same file store, broker freezes (SIGSTOP), duplicates (same
``Nats-Msg-Id``, and new ones; with a short ``duplicate_window``, replays after it passed),
poison on the event subjects, bad gRPC requests, and slow/failing fake providers. Then it waits
(bounded) for every saga to end and checks invariants 1-6 through the gRPC APIs, the streams
and the providers' ledgers. The report lists faults by kind, sagas by final state, dead letters
by reason (which must equal exactly the injected poison) and every violation; any violation
makes the exit status non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import nats
from rich.console import Console
from rich.table import Table

from choreo import contracts, faults, grpc_errors, subjects
from choreo.envelope import H_ID, H_MSG_ID, H_SUBJECT, H_TIME, H_TYPE
from choreo.order.v1 import order_service_pb2_grpc as order_grpc
from choreo.streamread import StoredMessage, read_stream
from choreo.streams import CONTEXTS
from choreo.testing import envelope_for
from services.audit import audit, read_ledgers, wait_for_quiescence
from services.catalog import load_catalog
from services.registry import SERVICE_NAMES
from services.settings import REPO_ROOT, SagaSettings
from services.system import System, SystemConfig
from services.workload import Placed, bad_requests, mixed_paths, place_all, wait_until_final

CHAOS_CATALOG = REPO_ROOT / "catalog" / "chaos.json"
CRASH_POINTS = {
    "kill_after_commit_before_ack": faults.AFTER_COMMIT_BEFORE_ACK,
    "kill_after_publish_before_mark": faults.AFTER_PUBLISH_BEFORE_MARK,
}
POISON_SUBJECTS = (
    "choreo.order.v1.OrderCreated",
    "choreo.payment.v1.PaymentCompleted",
    "choreo.shipping.v1.ShipmentCreated",
)


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
    bad_requests: int = 7
    duplicate_window_s: float = 120.0
    provider_failure_rate: float = 0.05
    provider_latency_ms: int = 2
    duration_s: float = 240.0
    # Deliberately broken builds: the run must then report violations.
    disable_inbox: bool = False
    ack_before_handling: bool = False


@dataclass
class ChaosReport:
    faults: Counter[str] = field(default_factory=Counter)
    final_states: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    expected_dead_letters: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    sagas: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sagas": self.sagas,
            "seconds": round(self.seconds, 1),
            "faults": dict(self.faults),
            "final_states": dict(self.final_states),
            "dead_letters": dict(self.dead_letters),
            "expected_dead_letters": dict(self.expected_dead_letters),
            "recovery_after_broker_restart_s": self.recovery_s,
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
            # Ample stock of everyday items, so only SKU-RARE runs out, however long the run.
            "CHOREO_CATALOG": str(CHAOS_CATALOG),
        }
        if config.disable_inbox:
            env["CHOREO_UNSAFE_DISABLE_INBOX"] = "1"
        if config.ack_before_handling:
            env["CHOREO_UNSAFE_ACK_BEFORE_HANDLING"] = "1"
        self.system = System(SystemConfig(data_dir=self.workdir, grpc_base_port=None, env=env))
        self.completions: list[float] = []
        self.restarts_at: list[float] = []

    # --- faults ---------------------------------------------------------------------------

    async def kill_random_service(self) -> None:
        assert self.system.supervisor is not None
        name = self.rng.choice(SERVICE_NAMES)
        self.system.supervisor.kill(name)
        self.report.faults["sigkill"] += 1
        await asyncio.sleep(self.rng.uniform(0.2, 1.5))
        await self._restart(name)

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
                faults.AFTER_COMMIT_BEFORE_PUBLISH,
                "order",
            )
        managed = self.system.supervisor.processes[name]
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
        await self._restart(name)

    async def _restart(self, name: str) -> None:
        assert self.system.supervisor is not None
        for attempt in range(5):
            try:
                await self.system.supervisor.restart(name, timeout=30)
                return
            except (RuntimeError, TimeoutError):
                await asyncio.sleep(0.5 * (attempt + 1))
        self.report.violations.append(f"service {name} could not be restarted")

    async def restart_broker(self) -> None:
        broker = self.system.broker
        assert broker is not None
        broker.kill()  # a crash, not a clean stop; the file store survives
        self.report.faults["broker_crash_restart"] += 1
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        await asyncio.to_thread(broker.start)
        self.restarts_at.append(time.monotonic())

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
        await js.publish(subject, body, headers=headers)
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
                fields = [f for f, _ in grpc_errors.field_violations(exc)]
                if exc.code() != grpc.StatusCode.INVALID_ARGUMENT or expected_field not in fields:
                    self.report.violations.append(
                        f"invariant 6: {what}: {exc.code().name} naming {fields}"
                    )
            self.report.faults["bad_grpc_request"] += 1

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
        )
        if c.duplicate_window_s < 30:
            kinds.append("replay_after_window")
        # Broker faults land in the first two thirds, so sagas are still flowing afterwards
        # and the time to recover can be measured.
        early = {"broker_restart", "broker_pause"}
        return sorted(
            (self.rng.uniform(0.5, spread_s * (0.66 if kind in early else 1.0)), kind)
            for kind in kinds
        )

    async def inject(
        self, js: Any, stub: order_grpc.OrderServiceAsyncStub, spread_s: float
    ) -> None:
        started = time.monotonic()
        poison_index = 0
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
            self.system.nats_url,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            error_cb=quiet,
        )
        js = nc.jetstream()

        async def completed(_: Any) -> None:
            self.completions.append(time.monotonic())

        await nc.subscribe("choreo.notification.v1.NotificationSent", cb=completed)
        paths = mixed_paths(c.sagas, seed=c.seed)
        channel = grpc.aio.insecure_channel(self.system.addresses["order"])
        stub: order_grpc.OrderServiceAsyncStub = order_grpc.OrderServiceStub(channel)
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
            placed: list[Placed] = await placing
            await injecting
            self.report.sagas = len(placed)
            self.console.print(f"placed {len(placed)} orders; waiting for quiescence ...")
            stuck = await wait_until_final(stub, placed, timeout=c.duration_s)
            for item in stuck:
                self.report.violations.append(f"invariant 1: order {item.order_id} never ended")
            for item in placed:
                if item.order_id not in {s.order_id for s in stuck} and (
                    item.status != item.path.expected_status
                ):
                    self.report.violations.append(
                        f"invariant 1: order {item.order_id} ({item.path}) ended as {item.status}"
                    )
            await wait_for_quiescence(js, self.workdir, timeout_s=60)  # last reactions land
            saga = SagaSettings(catalog_path=CHAOS_CATALOG)
            audited = await audit(
                js=js,
                addresses=self.system.addresses,
                catalog=load_catalog(saga.catalog_path),
                ledgers=await read_ledgers(self.workdir, saga),
            )
        finally:
            await channel.close()
            letters = await _dead_letters(js)
            await nc.close()
        self.report.final_states = audited.final_states
        self.report.violations += [str(v) for v in audited.violations]
        self.report.dead_letters = Counter(f"{s}:{r}" for s, r in letters)
        if self.report.dead_letters != self.report.expected_dead_letters:
            self.report.violations.append(
                f"dead letters {dict(self.report.dead_letters)} != injected poison"
                f" {dict(self.report.expected_dead_letters)}"
            )
        self.report.recovery_s = [self._recovery(at) for at in self.restarts_at]

    def _recovery(self, restarted_at: float) -> float:
        after = [t for t in self.completions if t >= restarted_at]
        return round(after[0] - restarted_at, 2) if after else -1.0


async def _dead_letters(js: Any) -> list[tuple[str, str]]:
    from choreo import dlq

    return [(letter.service, letter.reason) for letter in await dlq.list_dead_letters(js)]


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
    console.print(table)
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
    chaos = Chaos(config, console)
    try:
        report = await chaos.run()
    finally:
        if not args.keep:
            shutil.rmtree(chaos.workdir, ignore_errors=True)
    print_report(console, report)
    if args.output:
        args.output.write_text(json.dumps(report.as_json(), indent=2))
    return 0 if report.ok else 1
