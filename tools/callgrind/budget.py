"""Instructions per event, per layer, of one service's hot path: repeatable where time is not.

    python -m tools.callgrind.budget --events 2000            # under callgrind (valgrind)
    python -m tools.callgrind.budget --events 50 --no-valgrind # the same loop, timed only

The loop runs in-process, without a broker: the real runtime code (nats-py's parser and
publish path, choreo.pull, choreo.envelope, choreo.validation, choreo.handling with the inbox
and the outbox on a SQLite file, choreo.outbox's relay, the ack, choreo.consumer around it all)
on a nats-py client whose socket is memory (:mod:`tools.callgrind.wire`). The step is the
inventory's reservation (:mod:`tools.callgrind.workload`).

Why stages and not a profile of one run: under CPython 3.11 callgrind sees the interpreter's C
functions, not the Python functions it runs, so the inclusive cost of ``Envelope.from_headers``
is not in the callgrind file. Instead every layer runs on its own, over all N events (its
inputs prepared beforehand, outside it), between two calls of a marker C function
(``_statistics._normal_dist_inv_cdf``, which nothing else calls); ``--dump-before`` on it makes
callgrind write the counts of each stretch to a file of its own, and each file's ``totals`` is
that stretch's cost. Layers that only exist inside a transaction are measured cumulatively (the
unit of work alone, then with the domain SQL, then with the emit) and told apart by difference.
The last stage runs the whole path through ``Consumer.handle_batch`` and the relay; what it
costs beyond the layers is the consumer's own bookkeeping. The transport's answering of
publishes (the fake server's work) is measured on its own and taken off.

The FastStream column runs the same step on FastStream 0.7.8's NATS subscriber (``consume``:
its decoder, the handler with a commit and an awaited ``broker.publish``, the ack on return)
over the same in-memory client. Its receive is nats-py's parser only: FastStream's ``fetch``
(nats-py's pull, a task per message) is not run, which flatters it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from choreo import contracts
from choreo.broker import BrokerLink
from choreo.consumer import Consumer, Subscription
from choreo.envelope import EventRegistry, decode
from choreo.handling import Handler, HandlerContext
from choreo.natsconn import RuntimeClient
from choreo.outbox import OutboxRelay, OutboxRow
from choreo.pull import ContinuousPull
from choreo.settings import RuntimeSettings
from choreo.store.port import Transaction
from choreo.store.schema import runtime_schema
from choreo.store.sqlite import SqliteDatabase
from choreo.validation import event_violations
from shop.order.v1 import events_pb2 as order_events
from tools.callgrind import workload
from tools.callgrind.wire import MemoryTransport, ack_subject, connected_client, disconnect, hmsg

DEFAULT_OUTPUT = Path("bench-results/callgrind-budget.json")
MARKER = "_statistics__normal_dist_inv_cdf"  # the C function --dump-before names
JS_API = "$JS.API"
DELETE_EVERY = 256  # the relay deletes published rows in batches of its batch size

# (key, what it covers), in the order of the hot path.
CHOREO_LAYERS: tuple[tuple[str, str], ...] = (
    ("receive", "nats-py parses the delivery; choreo.pull hands the batch over"),
    ("decode", "envelope from headers, Protobuf body (choreo.envelope.decode)"),
    ("validate", "the contract's buf.validate rules and NUL check (protovalidate)"),
    ("unit_of_work", "handler context, inbox insert, savepoint, group COMMIT"),
    ("domain_sql", "the handler's own statements (2 updates, 1 insert)"),
    ("emit", "aggregate version, caused envelope, headers, outbox insert"),
    ("relay", "publish up to the socket, its PubAck, the batched delete"),
    ("ack", "msg.ack() up to the socket"),
    ("consumer", "choreo.consumer's bookkeeping around the layers (handle_batch)"),
)
FASTSTREAM_LAYERS: tuple[tuple[str, str], ...] = (
    ("receive", "nats-py parses the delivery (FastStream's fetch not run)"),
    ("handler", "Protobuf decode, the domain SQL and its COMMIT, Protobuf encode"),
    ("framework", "FastStream's consume around it, broker.publish and its PubAck, the ack"),
)


def _mark() -> None:
    """The stage boundary callgrind dumps at (--dump-before); a cheap no-op otherwise."""
    import _statistics  # type: ignore[import-not-found]

    _statistics._normal_dist_inv_cdf(0.5, 0.0, 1.0)


@dataclass
class Meter:
    """Counts marker calls; a stage's cost is in the dump its closing mark triggers."""

    marks: int = 0
    dumps: dict[str, int] = field(default_factory=dict)  # stage -> dump number
    wall_ns: dict[str, int] = field(default_factory=dict)

    def mark(self) -> None:
        _mark()
        self.marks += 1

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.mark()  # closes the harness's stretch before it
        started = time.perf_counter_ns()
        yield
        self.wall_ns[name] = time.perf_counter_ns() - started
        self.mark()
        self.dumps[name] = self.marks


async def _no_position(tx: Transaction) -> None:
    """``after_open`` of an unordered subscription (the consumer's ``_advance`` does nothing)."""


class ChoreoPath:
    """The inventory service's consumer of ``OrderCreated`` on the in-memory client."""

    def __init__(self, directory: Path, batch: int) -> None:
        self.batch = batch
        self.db = SqliteDatabase(directory / "choreo.db")
        self.settings = RuntimeSettings(service=workload.SERVICE)
        self.subscription = Subscription(
            workload.SERVICE, {order_events.OrderCreated: workload.on_order_created}
        )
        self.registry = EventRegistry()
        for cls in contracts.event_classes().values():
            self.registry.register(cls)
        self.transport = MemoryTransport(stream="SHOP_INVENTORY")
        self._tasks: list[asyncio.Task[Any]] = []
        self._next_index = 0
        self._stream_seq = 0
        self.sid = 0

    async def open(self) -> None:
        await self.db.migrate(runtime_schema(self.db.dialect) + workload.SCHEMA)
        async with self.db.transaction() as tx:
            await workload.seed(tx)
        self.nc, self._tasks = await connected_client(self.transport, RuntimeClient)
        self.relay = OutboxRelay(self.db, BrokerLink.of(self.nc), service=workload.SERVICE)
        self.pull = ContinuousPull(
            self.nc,
            JS_API,
            self.subscription.stream,
            self.subscription.durable,
            batch=self.settings.fetch_batch,
            expires_s=5.0,
        )
        await self.pull.start()
        self.sid = max(self.nc._subs)  # the pull's inbox: the subscription just made
        self.consumer = Consumer(
            js=None,  # only dead letters use it, and the hot path files none
            db=self.db,
            subscription=self.subscription,
            registry=self.registry,
            aggregate_type_of=contracts.aggregate_type,
            settings=self.settings,
            on_commit=self.relay.submit,
        )

    async def close(self) -> None:
        await disconnect(self.nc, self._tasks)
        await self.db.close()

    # --- inputs (prepared outside the stages) -------------------------------------------

    def frames(self, count: int) -> list[bytes]:
        """Deliveries of ``count`` new orders, a batch of ``self.batch`` per frame."""
        out: list[bytes] = []
        for start in range(0, count, self.batch):
            chunk = b""
            for _ in range(min(self.batch, count - start)):
                self._next_index += 1
                self._stream_seq += 1
                event = workload.order_created(self._next_index)
                envelope = workload.envelope_of(event)
                reply = ack_subject(
                    self.subscription.stream, self.subscription.durable, 1, self._stream_seq, 0
                )
                chunk += hmsg(
                    envelope.subject,
                    self.sid,
                    reply,
                    envelope.to_headers(),
                    event.SerializeToString(),
                )
            out.append(chunk)
        return out

    async def receive(self, frames: list[bytes]) -> list[list[Any]]:
        batches = []
        for frame in frames:
            self.transport.feed(frame)
            batches.append(await self.pull.next_batch(self.batch, timeout=5.0))
        return batches

    def decoded(self, batches: list[list[Any]]) -> list[list[tuple[Any, Any]]]:
        return [[decode(msg.headers, msg.data, self.registry) for msg in msgs] for msgs in batches]

    async def committed(
        self, handler: Handler, batches: list[list[tuple[Any, Any]]]
    ) -> list[OutboxRow]:
        """Each batch's units side by side, as the consumer runs a batch's aggregates."""
        rows: list[OutboxRow] = []
        for pairs in batches:
            for done in await asyncio.gather(*(self.unit(handler, e, m) for e, m in pairs)):
                rows += done
        return rows

    # --- the layers ---------------------------------------------------------------------

    async def unit(self, handler: Handler, envelope: Any, event: Any) -> list[OutboxRow]:
        """One event's handler and unit of work, as the consumer runs them."""
        context = HandlerContext(
            service=workload.SERVICE,
            consumer=self.subscription.durable,
            envelope=envelope,
            db=self.db,
            settings=self.settings,
            aggregate_type_of=contracts.aggregate_type,
        )
        try:
            await handler(context, event)
            await context.commit(_no_position)
        except BaseException as error:
            await context.abort(error)
            raise
        return context.outbox_rows

    async def relay_batch(self) -> None:
        """What the relay's run loop does for one batch: send it, and go on while its acks
        come back (through the read loop, then the futures' callbacks: a few loop steps)."""
        await self.relay.send_queued()
        # Bare loop steps, as the service's loop takes them: an Event would add a future per
        # batch that the service does not pay.
        while self.relay.in_flight:  # noqa: ASYNC110
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the last future's callbacks, which mark the batch published

    async def relay_rows(self, rows: list[OutboxRow]) -> None:
        for start in range(0, len(rows), self.batch):
            self.relay.submit(rows[start : start + self.batch])
            await self.relay_batch()
            if (start // self.batch + 1) * self.batch % DELETE_EVERY < self.batch:
                await self.relay.delete_published()
        await self.relay.delete_published()

    async def ack(self, batches: list[list[Any]]) -> None:
        for msgs in batches:
            for msg in msgs:
                await msg.ack()
            await asyncio.sleep(0)  # the flusher writes the batch's acks, as between fetches

    async def end_to_end(self, frames: list[bytes]) -> None:
        """The whole path as a service runs it: fetch, Consumer.handle_batch, the relay."""
        handled = 0
        for frame in frames:
            self.transport.feed(frame)
            msgs = await self.pull.next_batch(self.batch, timeout=5.0)
            await self.consumer.handle_batch(msgs)
            await self.relay_batch()
            handled += len(msgs)
            if handled % DELETE_EVERY < self.batch:
                await self.relay.delete_published()
        await self.relay.delete_published()
        await asyncio.sleep(0)


async def _run_choreo(meter: Meter, directory: Path, events: int, batch: int) -> dict[str, int]:
    """Run every choreo stage; returns how many events each handled (for the checks)."""
    path = ChoreoPath(directory, batch)
    await path.open()
    counts: dict[str, int] = {}
    try:
        await path.end_to_end(path.frames(batch))  # warm-up: caches, first statements
        frames = path.frames(events)
        with meter.stage("choreo.receive"):
            received = await path.receive(frames)
        counts["receive"] = sum(map(len, received))
        with meter.stage("choreo.decode"):
            decoded = [decode(m.headers, m.data, path.registry) for b in received for m in b]
        with meter.stage("choreo.validate"):
            broken = [event_violations(event) for _, event in decoded]
        counts["valid"] = sum(1 for found in broken if not found)
        stages: list[tuple[str, Handler]] = [
            ("choreo.unit_of_work", workload.inbox_only),
            ("choreo.domain_sql", workload.reserve_only),
            ("choreo.emit", workload.on_order_created),
        ]
        rows: list[OutboxRow] = []
        for name, handler in stages:
            pairs = path.decoded(await path.receive(path.frames(events)))
            with meter.stage(name):
                rows = await path.committed(handler, pairs)
        counts["outbox_rows"] = len(rows)
        published = path.relay.published
        with meter.stage("choreo.relay"):
            await path.relay_rows(rows)
        counts["published"] = path.relay.published - published
        batches = await path.receive(path.frames(events))
        with meter.stage("choreo.ack"):
            await path.ack(batches)
        frames = path.frames(events)
        before = path.consumer.stats.outcomes.get("handled", 0)
        with meter.stage("choreo.end_to_end"):
            await path.end_to_end(frames)
        counts["handled"] = path.consumer.stats.outcomes.get("handled", 0) - before
        await _measure_wire(meter, path, events)
    finally:
        await path.close()
    return counts


async def _measure_wire(meter: Meter, path: ChoreoPath, events: int) -> None:
    """The fake server's own cost per relay publish and per ack (taken off the layers)."""
    relay_cmd = _captured_command(path, b"HPUB ")
    ack_cmd = b"PUB " + ack_subject("S", "d", 1, 1, 0).encode() + b" 0\r\n\r\n"
    for name, command in (("wire.publish", relay_cmd), ("wire.ack", ack_cmd)):
        commands = [command] * events
        with meter.stage(name):
            for one in commands:
                path.transport.writelines((one,))
        path.transport.discard_inbound()


def _captured_command(path: ChoreoPath, prefix: bytes) -> bytes:
    """One command the relay sent, as written (kept by the transport for this)."""
    command = path.transport.samples.get(prefix[:4])
    if command is None:
        raise RuntimeError(f"nothing starting {prefix!r} was written")
    return command


async def _run_faststream(meter: Meter, directory: Path, events: int, batch: int) -> int:
    from tools.callgrind.faststream_path import FastStreamPath

    path = FastStreamPath(directory, batch)
    await path.open()
    try:
        await path.consume(path.frames(batch))  # warm-up
        frames = path.frames(events)
        with meter.stage("faststream.receive"):
            received = await path.receive(frames)
        bodies = [msg.data for msgs in received for msg in msgs]
        with meter.stage("faststream.handler"):
            await path.handler_only(bodies)
        frames = path.frames(events)
        before = path.handled
        with meter.stage("faststream.end_to_end"):
            await path.consume(frames)
        handled = path.handled - before
        # The fake server's share: one publish with a reply and one ack per event, as above.
        await _measure_wire_faststream(meter, path, events)
    finally:
        await path.close()
    return handled


async def _measure_wire_faststream(meter: Meter, path: Any, events: int) -> None:
    publish_cmd = path.transport.samples[b"HPUB"]
    commands = [publish_cmd] * events
    with meter.stage("wire.fs_publish"):
        for one in commands:
            path.transport.writelines((one,))
    path.transport.discard_inbound()


# --- the report ---------------------------------------------------------------------------


def layer_budget(per_stage: dict[str, float]) -> dict[str, Any]:
    """Per-event cost of each layer from the per-event cost of each stage."""
    get = per_stage.get
    wire_publish, wire_ack = get("wire.publish", 0.0), get("wire.ack", 0.0)
    choreo = {
        "receive": get("choreo.receive", 0.0),
        "decode": get("choreo.decode", 0.0),
        "validate": get("choreo.validate", 0.0),
        "unit_of_work": get("choreo.unit_of_work", 0.0),
        "domain_sql": get("choreo.domain_sql", 0.0) - get("choreo.unit_of_work", 0.0),
        "emit": get("choreo.emit", 0.0) - get("choreo.domain_sql", 0.0),
        "relay": get("choreo.relay", 0.0) - wire_publish,
        "ack": get("choreo.ack", 0.0) - wire_ack,
    }
    total = get("choreo.end_to_end", 0.0) - wire_publish - wire_ack
    choreo["consumer"] = total - sum(choreo.values())
    report: dict[str, Any] = {"choreo": {"layers": choreo, "total": total}}
    if "faststream.end_to_end" in per_stage:
        # end_to_end includes the receive, as choreo's does.
        fs_total = get("faststream.end_to_end", 0.0) - get("wire.fs_publish", 0.0) - wire_ack
        fs = {
            "receive": get("faststream.receive", 0.0),
            "handler": get("faststream.handler", 0.0),
        }
        fs["framework"] = fs_total - sum(fs.values())
        report["faststream"] = {"layers": fs, "total": fs_total}
    return report


def format_table(report: dict[str, Any], unit: str) -> str:
    lines = [f"{'layer':<14}{'choreo':>14}  what ({unit} per event)"]
    choreo = report["choreo"]
    for key, what in CHOREO_LAYERS:
        lines.append(f"{key:<14}{choreo['layers'][key]:>14,.0f}  {what}")
    lines.append(f"{'total':<14}{choreo['total']:>14,.0f}")
    fs = report.get("faststream")
    if fs is not None:
        lines.append("")
        lines.append(f"{'layer':<14}{'faststream':>14}")
        for key, what in FASTSTREAM_LAYERS:
            lines.append(f"{key:<14}{fs['layers'][key]:>14,.0f}  {what}")
        lines.append(f"{'total':<14}{fs['total']:>14,.0f}")
        lines.append(f"choreo / faststream: {choreo['total'] / fs['total']:.2f}")
    return "\n".join(lines)


# --- running ------------------------------------------------------------------------------


def run_loop(events: int, batch: int, faststream: bool) -> tuple[Meter, dict[str, int]]:
    """Run every stage in this process (under callgrind or not)."""
    from choreo.eventloop import loop_factory

    meter = Meter()
    counts: dict[str, int] = {}
    with (
        tempfile.TemporaryDirectory(prefix="callgrind-budget-") as tmp,
        asyncio.Runner(loop_factory=loop_factory()) as runner,
    ):
        counts.update(runner.run(_run_choreo(meter, Path(tmp), events, batch)))
        if faststream:
            counts["faststream_handled"] = runner.run(
                _run_faststream(meter, Path(tmp), events, batch)
            )
    meter.mark()  # closes the last stretch
    return meter, counts


def callgrind_totals(directory: Path, pid: int) -> dict[int, int]:
    """Dump number -> instructions, from ``callgrind.out.<pid>.<n>`` files."""
    totals: dict[int, int] = {}
    for path in directory.glob(f"callgrind.out.{pid}.*"):
        number = int(path.name.rsplit(".", 1)[1])
        match = re.search(rb"^totals:\s*(\d+)", path.read_bytes(), re.MULTILINE)
        if match:
            totals[number] = int(match.group(1))
    return totals


def per_event(costs: dict[str, float], events: int) -> dict[str, float]:
    return {name: cost / events for name, cost in costs.items()}


def _inner(args: argparse.Namespace) -> None:
    """The process callgrind runs: the loop, then the stage -> dump map for the outer one."""
    meter, counts = run_loop(args.events, args.batch, not args.no_faststream)
    Path(args.inner).write_text(
        json.dumps({"pid": os.getpid(), "dumps": meter.dumps, "counts": counts})
    )


def measure_with_callgrind(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install -y valgrind), or use --no-valgrind")
    with tempfile.TemporaryDirectory(prefix="callgrind-out-") as tmp:
        out = Path(tmp)
        sidecar = out / "stages.json"
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--dump-before={MARKER}",
            f"--callgrind-out-file={out}/callgrind.out.%p",
            sys.executable,
            "-m",
            "tools.callgrind.budget",
            "--inner",
            str(sidecar),
            "--events",
            str(args.events),
            "--batch",
            str(args.batch),
        ]
        if args.no_faststream:
            command.append("--no-faststream")
        subprocess.run(command, check=True, stderr=subprocess.DEVNULL if args.quiet else None)
        inner = json.loads(sidecar.read_text())
        totals = callgrind_totals(out, inner["pid"])
        if args.keep:
            shutil.copytree(out, args.keep, dirs_exist_ok=True)
    stages = {name: float(totals[number]) for name, number in inner["dumps"].items()}
    return {"unit": "instructions", "stages": stages, "counts": inner["counts"]}


def measure_in_process(args: argparse.Namespace) -> dict[str, Any]:
    meter, counts = run_loop(args.events, args.batch, not args.no_faststream)
    stages = {name: float(ns) for name, ns in meter.wall_ns.items()}
    return {"unit": "ns (wall clock, noisy)", "stages": stages, "counts": counts}


def build_report(measured: dict[str, Any], events: int, batch: int) -> dict[str, Any]:
    per_stage = per_event(measured["stages"], events)
    report = layer_budget(per_stage)
    report.update(
        {
            # Every stage handled every event (a timeout or an error would skew the figures).
            "complete": all(count == events for count in measured["counts"].values()),
            "unit": measured["unit"],
            "events": events,
            "batch": batch,
            "stages_per_event": per_stage,
            "counts": measured["counts"],
            "python": sys.version.split()[0],
        }
    )
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=2000, help="events per stage")
    parser.add_argument("--batch", type=int, default=16, help="events per fetched batch")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON report")
    parser.add_argument("--no-valgrind", action="store_true", help="time in-process instead")
    parser.add_argument("--no-faststream", action="store_true", help="choreo only")
    parser.add_argument("--keep", type=Path, help="copy callgrind's files to this folder")
    parser.add_argument("--quiet", action="store_true", help="hide valgrind's own output")
    parser.add_argument("--inner", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.inner:
        _inner(args)
        return {}
    measured = measure_in_process(args) if args.no_valgrind else measure_with_callgrind(args)
    report = build_report(measured, args.events, args.batch)
    report["command"] = " ".join(["python -m tools.callgrind.budget", *(argv or sys.argv[1:])])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report, report["unit"]))
    if not report["complete"]:
        print(f"INCOMPLETE: not every stage handled {args.events} events: {report['counts']}")
    print(f"written to {args.output}")
    return report


if __name__ == "__main__":
    main()
