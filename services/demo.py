"""``make demo`` / ``choreo demo``: the whole system, a mix of orders, and the proof.

Starts an embedded broker and the five services as processes, places orders that walk every
path of the saga (plus bad requests), shows progress, then prints the outcomes, one saga's
timeline and the result of checking invariants 1-6, and stops everything it started.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path

import grpc
import nats
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from choreo import grpc_errors, timeline
from services.audit import AuditReport, audit, read_ledgers, wait_for_quiescence
from services.catalog import load_catalog
from services.settings import SagaSettings
from services.system import System, SystemConfig
from services.workload import (
    Placed,
    SagaPath,
    bad_requests,
    mixed_paths,
    place_all,
    refused_as_it_should_be,
    wait_until_final,
)
from shop.order.v1 import order_service_pb2 as order_pb
from shop.order.v1 import order_service_pb2_grpc as order_grpc

INVARIANTS = {
    1: "every saga ends in exactly one final state, with its compensations",
    2: "stock is conserved per SKU (initial = available + reserved + shipped)",
    3: "no double charge or booking; every charged cancellation refunded once",
    4: "one notification per final state per order",
    5: "nothing lost: every event reached every subscriber or the DLQ",
    6: "bad input refused (INVALID_ARGUMENT naming the field, or by its size); nothing changes",
}


async def check_bad_input(stub: order_grpc.OrderServiceAsyncStub) -> list[str]:
    """Invariant 6 through the API: every bad request is refused, naming its field (or unread,
    by its size, when larger than any valid request), and the number of orders does not
    change."""
    problems: list[str] = []
    before = len((await stub.ListOrders(order_pb.ListOrdersRequest(page_size=500))).orders)
    for what, request, expected_field in bad_requests():
        try:
            await stub.PlaceOrder(request, timeout=10)
            problems.append(f"{what}: accepted")
        except grpc.aio.AioRpcError as exc:
            fields = [field for field, _ in grpc_errors.field_violations(exc)]
            if not refused_as_it_should_be(exc.code(), fields, expected_field, request.ByteSize()):
                problems.append(f"{what}: {exc.code().name} naming {fields}")
    after = len((await stub.ListOrders(order_pb.ListOrdersRequest(page_size=500))).orders)
    if after != before:
        problems.append(f"bad requests changed the number of orders: {before} -> {after}")
    return problems


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def outcome_table(placed: list[Placed]) -> Table:
    table = Table(title="Outcomes by path")
    for column in ("path", "orders", "shipped", "cancelled", "as expected", "p50 ms", "p95 ms"):
        table.add_column(column, justify="right" if column != "path" else "left")
    for path in SagaPath:
        items = [p for p in placed if p.path is path]
        latencies = [
            (p.finished_at - p.placed_at) * 1000 for p in items if p.finished_at is not None
        ]
        statuses = Counter(p.status for p in items)
        expected = sum(1 for p in items if p.status == path.expected_status)
        table.add_row(
            path.value,
            str(len(items)),
            str(statuses[order_pb.ORDER_STATUS_SHIPPED]),
            str(statuses[order_pb.ORDER_STATUS_CANCELLED]),
            f"{expected}/{len(items)}",
            f"{statistics.median(latencies):.0f}" if latencies else "-",
            f"{percentile(latencies, 0.95):.0f}" if latencies else "-",
        )
    return table


def invariant_table(report: AuditReport, bad_input_problems: list[str]) -> Table:
    table = Table(title="Invariants (docs/saga.md, The invariants)")
    table.add_column("#")
    table.add_column("invariant")
    table.add_column("result")
    for number, text in INVARIANTS.items():
        broken = [str(v) for v in report.violations if v.invariant == number]
        if number == 6:
            broken += bad_input_problems
        result = "[green]holds[/green]" if not broken else f"[red]{len(broken)} violation(s)[/red]"
        table.add_row(str(number), text, result)
    return table


async def run_demo(args: argparse.Namespace) -> int:
    console = Console()
    data_dir: Path = args.data_dir / "demo"
    shutil.rmtree(data_dir, ignore_errors=True)
    system = System(SystemConfig(data_dir=data_dir, nats_url=args.nats_url, grpc_base_port=None))
    started = time.monotonic()
    with console.status("starting nats-server and the five services ..."):
        await system.start()
    console.print(
        f"[bold]choreo[/bold] up in {time.monotonic() - started:.1f}s: NATS {system.nats_url},"
        f" services {', '.join(f'{n}@{a}' for n, a in system.addresses.items())}"
    )
    try:
        return await _run(console, system, args, data_dir)
    finally:
        with console.status("stopping everything ..."):
            codes = system.stop()
        console.print("stopped: " + ", ".join(f"{n} exit {c}" for n, c in codes.items()))


async def _run(console: Console, system: System, args: argparse.Namespace, data: Path) -> int:
    paths = mixed_paths(args.orders, seed=42)
    saga = SagaSettings()
    async with grpc.aio.insecure_channel(system.addresses["order"]) as channel:
        stub: order_grpc.OrderServiceAsyncStub = order_grpc.OrderServiceStub(channel)
        with Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            placing = progress.add_task("placing orders", total=len(paths))
            finishing = progress.add_task("sagas finished", total=len(paths))
            placed = await place_all(
                stub,
                paths,
                concurrency=args.concurrency,
                seed=42,
                on_placed=lambda _: progress.advance(placing),
            )
            stuck = await wait_until_final(
                stub,
                placed,
                timeout=120,
                on_progress=lambda done: progress.update(finishing, completed=done),
            )
        bad_input_problems = await check_bad_input(stub)
    nc = await nats.connect(system.nats_url)
    try:
        js = nc.jetstream()
        await wait_for_quiescence(js, data)  # compensations may still be landing
        report = await audit(
            js=js,
            addresses=system.addresses,
            catalog=load_catalog(saga.catalog_path),
            ledgers=await read_ledgers(data, saga),
        )
        shipping_failed = next((p for p in placed if p.path is SagaPath.UNSERVICEABLE), None)
        story = (
            await timeline.saga_timeline(js, shipping_failed.order_id) if shipping_failed else ""
        )
    finally:
        await nc.close()

    console.print(outcome_table(placed))
    events = Table(title="Events on the streams")
    events.add_column("event")
    events.add_column("count", justify="right")
    for name, count in sorted(report.events.items()):
        events.add_row(name, str(count))
    console.print(events)
    if story:
        console.print("[bold]One saga that failed at shipping, rebuilt by correlation id:[/bold]")
        console.print(story)
    console.print(
        f"bad requests: {len(bad_requests())} sent, all refused: INVALID_ARGUMENT naming the"
        " field, or RESOURCE_EXHAUSTED unread when larger than any valid request"
        if not bad_input_problems
        else f"bad requests: {bad_input_problems}"
    )
    console.print(invariant_table(report, bad_input_problems))
    for violation in report.violations[:20]:
        console.print(f"[red]{violation}[/red]")
    ok = report.ok and not bad_input_problems and not stuck
    if stuck:
        console.print(f"[red]{len(stuck)} saga(s) did not finish in time[/red]")
    unexpected = [p for p in placed if p.status != p.path.expected_status]
    if unexpected:
        ok = False
        console.print(f"[red]{len(unexpected)} order(s) ended in an unexpected state[/red]")
    verdict = "[green]all invariants hold[/green]" if ok else "[red]FAILED[/red]"
    console.print(
        f"[bold]{len(placed)} sagas, {report.orders} orders, verdict:[/bold] {verdict}"
        f"   (data and logs: {data.resolve()})"
    )
    return 0 if ok else 1
