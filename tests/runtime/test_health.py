"""The health decision, without a broker or a database."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from choreo.health import HealthMonitor, Observed, assess, outbox_backlog
from choreo.store import open_database
from choreo.store.schema import runtime_schema

STALL_S = 60.0
OUTBOX_S = 30.0


def verdict(
    *,
    connected: bool = True,
    cycles: dict[str, float] | None = None,
    outbox_age: float | None = None,
    now: float = 1000.0,
) -> tuple[bool, tuple[str, ...]]:
    result = assess(
        Observed(
            now=now,
            broker_connected=connected,
            last_cycles=cycles if cycles is not None else {"svc__a": now - 1},
            outbox_oldest_age_s=outbox_age,
        ),
        consumer_stall_s=STALL_S,
        outbox_max_age_s=OUTBOX_S,
    )
    return result.serving, result.reasons


def test_connected_consumers_cycling_and_empty_outbox_is_serving() -> None:
    assert verdict() == (True, ())
    assert verdict(outbox_age=OUTBOX_S) == (True, ())  # at the threshold, not over it


def test_a_lost_broker_connection_is_not_serving() -> None:
    serving, reasons = verdict(connected=False)
    assert not serving
    assert reasons == ("broker connection lost",)


def test_a_consumer_that_stopped_fetching_while_connected_is_not_serving() -> None:
    serving, reasons = verdict(cycles={"svc__a": 1000.0 - 1, "svc__b": 1000.0 - 61})
    assert not serving
    assert len(reasons) == 1 and "svc__b" in reasons[0]


def test_consumers_idle_without_a_connection_blame_only_the_connection() -> None:
    # No consumer can fetch without a broker: the cause reported is the connection.
    serving, reasons = verdict(connected=False, cycles={"svc__a": 0.0})
    assert not serving
    assert reasons == ("broker connection lost",)


def test_an_old_outbox_row_is_not_serving_even_when_connected() -> None:
    serving, reasons = verdict(outbox_age=OUTBOX_S + 1)
    assert not serving
    assert "outbox" in reasons[0]


def test_a_service_without_consumers_depends_on_the_broker_only() -> None:
    assert verdict(cycles={}) == (True, ())


async def test_monitor_reports_each_change_once_and_reads_the_outbox_age(tmp_path: Path) -> None:
    db = await open_database(f"sqlite:///{tmp_path / 'svc.db'}")
    await db.migrate(runtime_schema(db.dialect))
    connected = [True]
    reported: list[bool] = []

    async def set_status(serving: bool) -> None:
        reported.append(serving)

    monitor = HealthMonitor(
        service="svc",
        broker_connected=lambda: connected[0],
        last_cycles=lambda: {"svc__a": time.monotonic()},
        db=db,
        set_status=set_status,
        consumer_stall_s=STALL_S,
        outbox_max_age_s=OUTBOX_S,
    )
    try:
        assert (await monitor.check()).serving
        connected[0] = False
        assert not (await monitor.check()).serving
        assert not (await monitor.check()).serving
        connected[0] = True
        assert (await monitor.check()).serving
        assert reported == [False, True]  # changes only, not every check

        # A row written long ago and never published: the relay is stuck.
        async with db.transaction() as tx:
            await tx.execute(
                "INSERT INTO choreo_outbox (event_id, subject, headers, body, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                ("e-1", "choreo.x.v1.X.1", "{}", b"", time.time() - OUTBOX_S - 5),
            )
        assert await outbox_backlog(db) == (1, pytest.approx(time.time() - OUTBOX_S - 5, abs=2))
        monitor._outbox_read_at = float("-inf")  # read it now, not in a few seconds
        verdict = await monitor.check()
        assert not verdict.serving and "outbox" in verdict.reasons[0]
    finally:
        await db.close()
