"""``choreo bench --saga-lookup N``: how long ``choreo saga ID`` takes with N events stored.

Fills a fresh broker's five context streams with N events, eight per saga as on the happy
path (real envelopes and subjects, 190-byte bodies), then times the look-up of random sagas
(the correlation id is each subject's last token, so each stream is read through a filter)
against a whole-stream read of one stream, the way look-ups worked before. Prints a table and
writes ``saga_lookup.json`` to the output folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import nats
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from choreo import contracts, subjects, timeline
from choreo.broker import EmbeddedBroker
from choreo.envelope import root_envelope
from choreo.settings import RuntimeSettings
from choreo.streamread import read_stream
from choreo.streams import ensure_streams
from tools.rawchain import BODY_SIZES

PUBLISH_WINDOW = 2000  # publishes in flight before waiting for their acks


def happy_path_types() -> list[str]:
    return list(BODY_SIZES)


async def fill(js: Any, events: int, console: Console) -> list[str]:
    """Publish ``events`` events, eight per saga; returns the sagas' correlation ids."""
    types = happy_path_types()
    sagas = max(1, events // len(types))
    ids: list[str] = []
    pending: list[Any] = []
    with Progress(
        TextColumn("filling the streams"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("fill", total=sagas * len(types))
        for _ in range(sagas):
            order_id = str(uuid.uuid4())
            ids.append(order_id)
            for event_type in types:
                envelope = root_envelope(
                    event_type,
                    source=subjects.context_of(event_type),
                    correlation_id=order_id,
                    aggregate_type=subjects.context_of(event_type),
                    aggregate_id=order_id,
                    aggregate_version=1,
                )
                body = b"\x00" * BODY_SIZES[event_type]
                pending.append(
                    await js.publish_async(envelope.subject, body, headers=envelope.to_headers())
                )
            if len(pending) >= PUBLISH_WINDOW:
                await asyncio.gather(*pending)
                progress.advance(task, len(pending))
                pending.clear()
        await asyncio.gather(*pending)
        progress.advance(task, len(pending))
    return ids


async def run_saga_lookup_bench(args: argparse.Namespace) -> int:
    console = Console()
    events: int = args.saga_lookup
    workdir = Path(tempfile.mkdtemp(prefix="choreo-saga-lookup-"))
    broker = EmbeddedBroker(store_dir=workdir / "jetstream", log_file=workdir / "nats.log")
    await broker.astart()
    try:
        nc = await nats.connect(broker.url)
        js = nc.jetstream(timeout=30)
        await ensure_streams(js, RuntimeSettings())
        began = time.monotonic()
        ids = await fill(js, events, console)
        fill_s = time.monotonic() - began
        stored = 0
        for context in contracts.CONTEXTS:
            stored += (await js.stream_info(subjects.stream_name(context))).state.messages
        rng = random.Random(7)
        lookups_ms: list[float] = []
        for order_id in rng.sample(ids, min(20, len(ids))):
            started = time.perf_counter()
            # What `choreo saga ID` reads: the saga's events (payloads decoded) in every
            # stream, and its dead letters.
            steps = (await timeline.saga(js, order_id)).steps
            lookups_ms.append((time.perf_counter() - started) * 1000)
            if len(steps) != len(happy_path_types()):
                raise AssertionError(f"saga {order_id}: {len(steps)} steps found, expected 8")
        # The old way, on one stream only: read it whole and filter by header.
        started = time.perf_counter()
        whole = await read_stream(js, subjects.stream_name("shop.order"))
        whole_stream_s = time.perf_counter() - started
        await nc.close()
    finally:
        await broker.astop()
        shutil.rmtree(workdir, ignore_errors=True)
    lookup_ms = {
        "p50": round(statistics.median(lookups_ms), 1),
        "max": round(max(lookups_ms), 1),
        "samples": len(lookups_ms),
    }
    figures = {
        "command": f"choreo bench --saga-lookup {events}",
        "events_stored": stored,
        "fill_seconds": round(fill_s, 1),
        "lookup_ms": lookup_ms,
        "whole_order_stream_read_s": round(whole_stream_s, 2),
        "whole_order_stream_messages": len(whole),
    }
    table = Table(title=f"choreo saga ID with {stored:,} events in the streams")
    table.add_column("what")
    table.add_column("figure", justify="right")
    table.add_row("look-up p50 (5 filtered stream reads + the DLQ)", f"{lookup_ms['p50']} ms")
    table.add_row("look-up max of 20", f"{lookup_ms['max']} ms")
    table.add_row(
        f"old way, one stream read whole ({len(whole):,} messages)", f"{whole_stream_s:.2f} s"
    )
    console.print(table)
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    (output / "saga_lookup.json").write_text(json.dumps(figures, indent=2))
    console.print(f"figures: {output / 'saga_lookup.json'}")
    return 0
