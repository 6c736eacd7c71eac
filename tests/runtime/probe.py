"""A minimal service on the choreo runtime, used to test delivery semantics.

It reacts to the testkit's ``TicketOpened`` (tests/testkit) by counting the effect per ticket
(so a double application shows as a count of 2) and emitting ``ItemsHeld``. Run as a process
with ``python -m tests.runtime.probe`` (or ``choreo serve probe --app tests.runtime.probe:build``);
its settings come from ``CHOREO_*`` variables and ``PROBE_FAIL=1`` makes the handler raise every
time.
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
from tests.testkit import desk_events, stock_events

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS effects (ticket_id TEXT PRIMARY KEY, applied INTEGER NOT NULL)",
    # Portable SQL (the probe also runs on Postgres): order of application by a clock.
    "CREATE TABLE IF NOT EXISTS applied_versions (applied_ns BIGINT NOT NULL,"
    " aggregate_id TEXT, event_type TEXT, version INTEGER)",
]


@dataclass
class Behaviour:
    fail: bool = False
    attempts: list[float] = field(default_factory=list)


def definition(behaviour: Behaviour, ordered: bool = False) -> ServiceDefinition:
    async def on_ticket_opened(ctx: HandlerContext, event: desk_events.TicketOpened) -> None:
        behaviour.attempts.append(asyncio.get_running_loop().time())
        if behaviour.fail:
            raise RuntimeError("probe told to fail")
        await ctx.tx.execute(
            "INSERT INTO effects (ticket_id, applied) VALUES (?, 1) ON CONFLICT (ticket_id)"
            " DO UPDATE SET applied = effects.applied + 1",
            (event.ticket_id,),
        )
        ctx.emit(
            stock_events.ItemsHeld(ticket_id=event.ticket_id, hold_id=f"hold-{event.ticket_id}"),
            aggregate_id=event.ticket_id,
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
                    desk_events.TicketAccepted: record_version,
                    desk_events.TicketDone: record_version,
                    desk_events.TicketCancelled: record_version,
                },
                name="ticket_lifecycle",
                ordering=Ordering.STRICT,
            )
        )
    return ServiceDefinition(
        name="probe",
        handlers={desk_events.TicketOpened: on_ticket_opened},
        schema=SCHEMA,
        extra_subscriptions=extra,
    )


def effect_counts(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as connection:
        return dict(connection.execute("SELECT ticket_id, applied FROM effects").fetchall())


def outbox_rows(db_path: Path) -> int:
    with sqlite3.connect(db_path) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM choreo_outbox").fetchone()[0])


def applied_versions(db_path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(db_path) as connection:
        rows = connection.execute(
            "SELECT event_type, version FROM applied_versions ORDER BY applied_ns"
        ).fetchall()
    return [(t.rsplit(".", 1)[1], v) for t, v in rows]


def build(settings: RuntimeSettings) -> ServiceDefinition:
    """The probe for ``choreo serve probe --app tests.runtime.probe:build``."""
    return definition(Behaviour(fail=os.environ.get("PROBE_FAIL") == "1"))


async def main() -> None:
    logging.basicConfig(level=logging.INFO)
    # A test arms the process through its environment (CHOREO_CRASH_AT ...); the harness acts
    # at the runtime's checkpoints.
    from tools import faults

    faults.install()
    settings = RuntimeSettings.from_env(service="probe")
    runtime = ServiceRuntime(
        definition(Behaviour(fail=os.environ.get("PROBE_FAIL") == "1")), settings
    )
    await runtime.run_until_signal()


if __name__ == "__main__":
    asyncio.run(main())
