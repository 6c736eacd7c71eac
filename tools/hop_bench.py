"""``choreo bench --hops RATE``: where a saga's latency goes, hop by hop.

At a fixed open-loop arrival rate, happy-path sagas run through the five services; then the
streams are read back and every event of the saga's chain is placed on two clocks: when its
handler emitted it (``ce-time``, written in the emitting transaction) and when the broker
stored it (the stream's own timestamp). Each hop from one event to the next splits into:

- **to the handler**: from the broker storing an event to the next service's handler emitting
  its reaction: delivery, the pull, queueing behind other messages, decoding, the handler;
- **to the broker**: from that emit to the reaction being stored: the commit, the relay's
  publish and the broker's store.

The client's own clock adds the two ends: from calling ``PlaceOrder`` to the order service
emitting ``OrderCreated`` (the gRPC call and the command's handler), and from the broker
storing ``NotificationSent`` to the client seeing it on core NATS.

Both services and the broker run on this machine, so the two clocks are one. The figures tell
which half of the path a latency target has to be won on.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
from rich.console import Console
from rich.table import Table

from choreo import contracts, subjects
from choreo.envelope import H_CORRELATION_ID, H_TIME, H_TYPE
from choreo.streamread import drain, open_reader
from services.system import System
from tools.bench import bench_config, closed_loop, happy_path_load, open_loop

# The happy path's chain, by short event name (any schema version of each), in saga order.
# The notification reacts to the order's OrderShipped, so the order service's hop is on it.
CHAIN = ("OrderCreated", "InventoryReserved", "PaymentCompleted", "ShipmentCreated", "OrderShipped")
LAST = "NotificationSent"

# The client's own clock, beside the events': when it called PlaceOrder, and when it saw the
# saga's NotificationSent (on core NATS, as the bench's completions do).
CALLED = "PlaceOrder called"
SEEN = "NotificationSent seen"

# Event name (or CALLED, SEEN) -> (emitted at, stored at), epoch seconds, for one saga; the
# client's two moments have one time, given twice.
SagaClock = Mapping[str, tuple[float, float]]


@dataclass(frozen=True)
class Spread:
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values_ms: list[float]) -> Spread:
        ordered = sorted(values_ms)

        def at(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

        return cls(round(statistics.median(ordered), 2), at(0.90), at(0.99))


@dataclass(frozen=True)
class Hop:
    name: str  # "InventoryReserved -> PaymentCompleted"
    # stored(previous) -> emitted(this); for the command, the client's call -> emitted
    # (None without the client's clock); for the last row, stored -> seen by the client.
    to_handler_ms: Spread | None
    to_broker_ms: Spread | None  # emitted(this) -> stored(this); None for the last row


def hop_breakdown(sagas: Iterable[SagaClock]) -> tuple[int, list[Hop]]:
    """Per-hop latency spreads over the sagas whose whole chain is present; returns how many
    sagas that is, and the hops in chain order (the first is the command's own event). Where
    every such saga has the client's clock too, the first hop starts at the client's call and
    a last row runs from the broker to the client."""
    chain = (*CHAIN, LAST)
    complete = [saga for saga in sagas if all(name in saga for name in chain)]
    if not complete:
        raise ValueError("no saga with its whole chain of events in the streams")
    clocked = all(CALLED in saga and SEEN in saga for saga in complete)
    first = chain[0]
    hops = [
        Hop(
            f"PlaceOrder -> {first}",
            Spread.of([(s[first][0] - s[CALLED][0]) * 1000 for s in complete]) if clocked else None,
            Spread.of([(s[first][1] - s[first][0]) * 1000 for s in complete]),
        )
    ]
    for previous, this in itertools.pairwise(chain):
        hops.append(
            Hop(
                f"{previous} -> {this}",
                Spread.of([(s[this][0] - s[previous][1]) * 1000 for s in complete]),
                Spread.of([(s[this][1] - s[this][0]) * 1000 for s in complete]),
            )
        )
    if clocked:
        hops.append(
            Hop(
                f"{LAST} -> the client",
                Spread.of([(s[SEEN][0] - s[LAST][1]) * 1000 for s in complete]),
                None,
            )
        )
    return len(complete), hops


def _epoch(raw: str) -> float:
    return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


async def read_clocks(url: str) -> dict[str, dict[str, tuple[float, float]]]:
    """Every stored event of the chain, grouped by saga (correlation id)."""
    nc = await nats.connect(url)
    clocks: dict[str, dict[str, tuple[float, float]]] = {}
    try:
        js = nc.jetstream(timeout=30)
        by_stream: dict[str, list[str]] = {}
        for event_type in _chain_event_types():
            stream = subjects.stream_name(subjects.context_of(event_type))
            by_stream.setdefault(stream, []).append(subjects.event_type_filter(event_type))
        for stream, filters in by_stream.items():
            name, wanted = await open_reader(js, stream, filters)
            for message in await drain(js, stream, name, wanted):
                headers = message.headers
                correlation_id = headers.get(H_CORRELATION_ID)
                if not correlation_id or message.stored_at is None:
                    continue
                event = headers.get(H_TYPE, "").rsplit(".", 1)[-1]
                clocks.setdefault(correlation_id, {})[event] = (
                    _epoch(headers[H_TIME]),
                    message.stored_at.timestamp(),
                )
    finally:
        await nc.close()
    return clocks


def _chain_event_types() -> list[str]:
    wanted = {*CHAIN, LAST}
    return sorted(name for name in contracts.event_classes() if name.rsplit(".", 1)[-1] in wanted)


def hops_table(rate: float, sagas: int, end_to_end: Mapping[str, float], hops: list[Hop]) -> Table:
    table = Table(
        title=f"Where a saga's latency goes: {sagas} sagas at {rate:g}/s (open loop),"
        f" end to end p50 {end_to_end['p50']:.1f} ms, p99 {end_to_end['p99']:.1f} ms"
    )
    table.add_column("hop")
    table.add_column("to the handler (client) p50 / p90 / p99 ms", justify="right")
    table.add_column("to the broker p50 / p90 / p99 ms", justify="right")

    def cell(spread: Spread | None) -> str:
        if spread is None:
            return "-"
        return f"{spread.p50:.1f} / {spread.p90:.1f} / {spread.p99:.1f}"

    for hop in hops:
        table.add_row(hop.name, cell(hop.to_handler_ms), cell(hop.to_broker_ms))
    return table


async def measure_hops(
    rate: float, seconds: float, console: Console
) -> tuple[dict[str, Any], list[Hop]]:
    """Run the system, an open loop at ``rate``, and read the streams: (figures, hops)."""
    workdir = Path(tempfile.mkdtemp(prefix="choreo-hops-"))
    system = System(bench_config(workdir))
    try:
        await system.start()
        called: dict[str, float] = {}  # correlation id -> epoch seconds
        seen: dict[str, float] = {}  # correlation id -> monotonic seconds
        async with happy_path_load(system) as (start, completions):
            await closed_loop(start, completions, 4, 2.0)  # warm-up

            async def clocked_start() -> str:
                at = time.time()
                correlation_id = await start()
                called[correlation_id] = at
                return correlation_id

            completions.seen_at = seen
            console.print(f"open loop at {rate:g} sagas/s for {seconds:g}s ...")
            loop = await open_loop(clocked_start, completions, rate, seconds)
        to_epoch = time.time() - time.monotonic()
        assert system.broker is not None
        clocks = await read_clocks(system.broker.url)
        for correlation_id, at in called.items():
            if correlation_id in clocks and correlation_id in seen:
                clocks[correlation_id][CALLED] = (at, at)
                sighted = seen[correlation_id] + to_epoch
                clocks[correlation_id][SEEN] = (sighted, sighted)
        # The warm-up's sagas lack the client's clock: only the open loop's are measured.
        sagas, hops = hop_breakdown(
            clock for correlation_id, clock in clocks.items() if correlation_id in called
        )
    finally:
        system.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    figures = {
        "command": f"choreo bench --hops {rate:g}",
        "rate_per_s": rate,
        "seconds": seconds,
        "sagas": sagas,
        "end_to_end_ms": loop["latency_ms"],
        "hops": [asdict(hop) for hop in hops],
    }
    return figures, hops


async def run_hops_bench(args: argparse.Namespace) -> int:
    console = Console(width=max(120, Console().width))
    rate: float = args.hops
    if rate <= 0:
        console.print("[red]--hops takes an arrival rate in sagas per second, e.g. --hops 50[/red]")
        return 2
    figures, hops = await measure_hops(rate, 8.0 if args.quick else 20.0, console)
    console.print(hops_table(rate, figures["sagas"], figures["end_to_end_ms"], hops))
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    path = output / "hops.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    console.print(f"figures in {path}")
    return 0
