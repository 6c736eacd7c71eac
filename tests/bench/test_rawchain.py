"""The benchmark's baselines: the raw chain (and its durable variant) as real processes.

The ratio is only honest if the baseline does the saga's messaging: the same eight events per
happy saga, ending in ``NotificationSent``; the durable variant must really write the inbox and
clear the outbox.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from choreo.broker import EmbeddedBroker
from choreo.settings import RuntimeSettings
from choreo.streams import ensure_streams
from choreo.testing import envelope_for, wait_for
from services.registry import SERVICE_NAMES
from shop.order.v1 import events_pb2 as order_events
from tools.bench import percentiles
from tools.rawchain import BODY_SIZES, happy_reactions

SAGAS = 5


def test_each_happy_event_has_one_service_that_emits_it() -> None:
    emitted = [
        emit
        for service in SERVICE_NAMES
        for trigger, emit in happy_reactions(service).items()
        if trigger in BODY_SIZES and emit is not None
    ]
    # OrderCreated starts the saga (the client publishes it); the seven others are reactions.
    assert sorted(emitted) == sorted(set(BODY_SIZES) - {"shop.order.v1.OrderCreated"})


def test_percentiles_pick_from_the_sorted_latencies() -> None:
    assert percentiles([5.0, 1.0, 3.0, 2.0, 4.0] * 20) == {"p50": 3.0, "p95": 5.0, "p99": 5.0}
    assert percentiles([]) == {"p50": 0.0, "p95": 0.0, "p99": 0.0}


@pytest.fixture
async def streams(js: Any) -> None:
    await ensure_streams(js, RuntimeSettings())  # the chain binds its consumers on these


@pytest.fixture
def chain(
    broker: EmbeddedBroker, streams: None, tmp_path: Path, request: Any
) -> Iterator[tuple[Path, bool]]:
    durable: bool = request.param
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tools.rawchain", name, "--nats-url", broker.url]
            + (["--durable-db", str(tmp_path / f"{name}.db")] if durable else [])
        )
        for name in SERVICE_NAMES
    ]
    yield tmp_path, durable
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=10)


@pytest.mark.parametrize("chain", [False, True], ids=["raw", "durable"], indirect=True)
async def test_a_started_saga_runs_the_eight_events_to_notification_sent(
    js: Any, chain: tuple[Path, bool]
) -> None:
    folder, durable = chain
    await asyncio.sleep(1.0)  # let the chain bind its consumers
    for _ in range(SAGAS):
        order_id = str(uuid.uuid4())
        envelope = envelope_for(
            order_events.OrderCreated(order_id=order_id), aggregate_id=order_id, source="order"
        )
        await js.publish(envelope.subject, b"\x00" * 190, headers=envelope.to_headers())

    async def all_done() -> bool:
        info = await js.stream_info("SHOP_NOTIFICATION")
        return bool(info.state.messages == SAGAS)

    await wait_for(all_done, timeout=30, what=f"{SAGAS} NotificationSent")
    await asyncio.sleep(0.5)  # nothing more may follow
    total = sum(
        [(await js.stream_info(s.config.name)).state.messages for s in await js.streams_info()]
    )
    assert total == 8 * SAGAS

    databases = sorted(folder.glob("*.db"))
    if not durable:
        assert databases == []  # the plain chain keeps nothing
        return
    assert [db.stem for db in databases] == sorted(SERVICE_NAMES)
    handled = emitted_left = 0
    for db in databases:
        with sqlite3.connect(db) as conn:
            handled += conn.execute("SELECT COUNT(*) FROM choreo_inbox").fetchone()[0]
            emitted_left += conn.execute("SELECT COUNT(*) FROM choreo_outbox").fetchone()[0]
    # Every delivered event is in some inbox (several services react to some events) ...
    assert handled >= 7 * SAGAS
    # ... and every emitted row was deleted once the broker had it.
    assert emitted_left == 0
