"""The audit's precondition: nothing in flight, neither on a stream nor in an outbox."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from nats.js import api

from choreo.settings import RuntimeSettings
from choreo.store.schema import runtime_schema
from choreo.streams import ensure_streams
from choreo.testing import publish_event
from services.audit import consumer_backlogs, outbox_rows, wait_for_quiescence
from shop.order.v1 import events_pb2 as order_events


def make_outbox(data_dir: Path, service: str, rows: int) -> None:
    with sqlite3.connect(data_dir / f"{service}.db") as db:
        for statement in runtime_schema("sqlite"):
            db.execute(statement)
        for n in range(rows):
            db.execute(
                "INSERT INTO choreo_outbox (event_id, subject, headers, body, created_at)"
                " VALUES (?, 's', '{}', x'', 0)",
                (f"e{n}",),
            )


async def test_quiet_when_no_consumer_has_work_and_no_outbox_has_rows(
    js: Any, tmp_path: Path
) -> None:
    await ensure_streams(js, RuntimeSettings())
    make_outbox(tmp_path, "order", 0)
    assert await wait_for_quiescence(js, tmp_path, timeout_s=5, interval_s=0.05)


async def test_an_undelivered_event_is_not_quiet(js: Any, tmp_path: Path) -> None:
    await ensure_streams(js, RuntimeSettings())
    await js.add_consumer(
        "SHOP_ORDER",
        api.ConsumerConfig(durable_name="inventory__probe", ack_policy=api.AckPolicy.EXPLICIT),
    )
    await publish_event(js, order_events.OrderCreated(order_id="o-1"), aggregate_id="o-1")
    (backlog,) = await consumer_backlogs(js)
    assert (backlog.durable, backlog.pending, backlog.unacked) == ("inventory__probe", 1, 0)
    assert not await wait_for_quiescence(js, tmp_path, timeout_s=0.5, interval_s=0.05)


async def test_a_committed_unpublished_event_is_not_quiet(js: Any, tmp_path: Path) -> None:
    await ensure_streams(js, RuntimeSettings())
    make_outbox(tmp_path, "payment", 2)
    assert outbox_rows(tmp_path) == 2
    assert not await wait_for_quiescence(js, tmp_path, timeout_s=0.5, interval_s=0.05)
