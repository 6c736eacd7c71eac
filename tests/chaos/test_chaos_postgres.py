"""A seeded chaos run in CI on Postgres: the same checks as the SQLite run, smaller.

The five services run as processes on fresh databases of the local Postgres (127.0.0.1:5432);
they are SIGKILLed (also at their worst moments), the broker is crashed and frozen, events are
duplicated and poisoned, the payment gateway goes down past the retry budget. Every saga must
end, invariants 1-6 must hold (the quiescence check reads every service's Postgres outbox),
and the run's databases are dropped afterwards.
"""

from __future__ import annotations

import asyncpg
from rich.console import Console

from tests.postgres import POSTGRES_ADMIN_URL
from tools.chaos import ORDERS_PER_MIGRATION_PHASE, PROBES_PER_OUTAGE, Chaos, ChaosConfig

SAGAS = 60


async def _database_exists(name: str) -> bool:
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        return bool(await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await admin.close()


async def test_chaos_on_postgres_keeps_every_invariant_and_every_saga_ends() -> None:
    config = ChaosConfig(
        sagas=SAGAS,
        concurrency=8,
        seed=11,
        kills=4,
        broker_restarts=1,
        broker_pauses=1,
        duplicates=8,
        poison=3,
        provider_outages=1,
        hung_providers=0,
        crash_messages=0,
        long_broker_outages=0,
        duration_s=90,
        store="postgres",
        database_url=POSTGRES_ADMIN_URL,
    )
    chaos = Chaos(config, Console(quiet=True))
    databases = chaos.system.database_urls
    try:
        report = await chaos.run()
        # The state really was in Postgres: every placed order is a row of the order database.
        order_db = await asyncpg.connect(databases["order"])
        try:
            orders = await order_db.fetchval("SELECT COUNT(*) FROM orders")
        finally:
            await order_db.close()
    finally:
        await chaos.cleanup()

    assert report.violations == [], "\n".join(
        report.violations
    )  # includes "invariant 1: order ... never ended"
    # The sagas, a probe order after the broker restart, a few at the start of the outage, a
    # few in each phase of the schema migration and two in the key rotation.
    placed = SAGAS + 3 + PROBES_PER_OUTAGE + 2 * ORDERS_PER_MIGRATION_PHASE
    assert sum(report.final_states.values()) == placed == orders
    kills = sum(
        n
        for kind, n in report.faults.items()
        if kind == "sigkill" or (kind.startswith("kill_") and "not_reached" not in kind)
    )
    assert kills >= 3, report.faults
    assert report.faults["broker_crash_restart"] == 1
    assert report.faults["provider_outage_payment"] == 1
    assert sum(n for kind, n in report.faults.items() if kind.startswith("poison_")) == 3
    assert report.dead_letters == report.expected_dead_letters
    # The operator replayed and discarded letters while the faults ran.
    assert report.faults["operator_discard_poison"] >= 1, report.faults
    assert report.faults["operator_replay"] >= 1, report.operator_log
    assert all(seconds >= 0 for seconds in report.recovery_s), report.recovery_s
    for url in databases.values():
        assert not await _database_exists(url.rsplit("/", 1)[-1]), url
