"""A minimal service on the choreo runtime, used to test delivery semantics.

It reacts to ``OrderCreated`` by counting the effect per order (so a double application shows
as a count of 2) and emitting ``InventoryReserved``. Run as a process with
``python -m tests.runtime.probe``; its settings come from ``CHOREO_*`` variables and
``PROBE_FAIL=1`` makes the handler raise every time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from choreo.consumer import Ordering, Subscription
from choreo.handling import HandlerContext
from choreo.service import ServiceDefinition, ServiceRuntime
from choreo.settings import RuntimeSettings
from shop.inventory.v1 import events_pb2 as inventory_events
from shop.order.v1 import events_pb2 as order_events

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS effects (order_id TEXT PRIMARY KEY, applied INTEGER NOT NULL)",
    # Portable SQL (the probe also runs on Postgres): order of application by a clock.
    "CREATE TABLE IF NOT EXISTS applied_versions (applied_ns BIGINT NOT NULL,"
    " aggregate_id TEXT, event_type TEXT, version INTEGER)",
]


@dataclass
class Behaviour:
    fail: bool = False
    attempts: list[float] = field(default_factory=list)


def definition(behaviour: Behaviour, ordered: bool = False) -> ServiceDefinition:
    async def on_order_created(ctx: HandlerContext, event: order_events.OrderCreated) -> None:
        behaviour.attempts.append(asyncio.get_running_loop().time())
        if behaviour.fail:
            raise RuntimeError("probe told to fail")
        await ctx.tx.execute(
            "INSERT INTO effects (order_id, applied) VALUES (?, 1) ON CONFLICT (order_id)"
            " DO UPDATE SET applied = effects.applied + 1",
            (event.order_id,),
        )
        ctx.emit(
            inventory_events.InventoryReserved(
                order_id=event.order_id, reservation_id=f"res-{event.order_id}"
            ),
            aggregate_id=event.order_id,
        )

    async def record_version(ctx: HandlerContext, event: object) -> None:
        await ctx.tx.execute(
            "INSERT INTO applied_versions (applied_ns, aggregate_id, event_type, version)"
            " VALUES (?, ?, ?, ?)",
            (
                time.monotonic_ns(),
                ctx.envelope.aggregate_id,
                ctx.envelope.event_type,
                ctx.envelope.aggregate_version,
            ),
        )

    extra = []
    if ordered:
        extra.append(
            Subscription(
                "probe",
                {
                    order_events.OrderConfirmed: record_version,
                    order_events.OrderShipped: record_version,
                    order_events.OrderCancelled: record_version,
                },
                name="order_lifecycle",
                ordering=Ordering.STRICT,
            )
        )
    return ServiceDefinition(
        name="probe",
        handlers={order_events.OrderCreated: on_order_created},
        schema=SCHEMA,
        extra_subscriptions=extra,
    )


def effect_counts(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as connection:
        return dict(connection.execute("SELECT order_id, applied FROM effects").fetchall())


def outbox_rows(db_path: Path) -> int:
    with sqlite3.connect(db_path) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM choreo_outbox").fetchone()[0])


def applied_versions(db_path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(db_path) as connection:
        rows = connection.execute(
            "SELECT event_type, version FROM applied_versions ORDER BY applied_ns"
        ).fetchall()
    return [(t.rsplit(".", 1)[1], v) for t, v in rows]


async def main() -> None:
    logging.basicConfig(level=logging.INFO)
    settings = RuntimeSettings.from_env(service="probe")
    runtime = ServiceRuntime(
        definition(Behaviour(fail=os.environ.get("PROBE_FAIL") == "1")), settings
    )
    await runtime.run_until_signal()


if __name__ == "__main__":
    asyncio.run(main())
