"""Seeded chaos runs in CI: real processes killed, a real broker crashed, invariants checked."""

from __future__ import annotations

from rich.console import Console

from tools.chaos import ORDERS_PER_MIGRATION_PHASE, PROBES_PER_OUTAGE, Chaos, ChaosConfig


async def test_short_chaos_run_keeps_every_invariant_and_dlq_holds_exactly_the_poison() -> None:
    # A short duplicate window: some events are re-sent after it passed, with their original
    # Nats-Msg-Id, so the broker stores them again and only the inbox stands in the way.
    config = ChaosConfig(
        sagas=250,
        concurrency=16,
        seed=7,
        kills=7,
        broker_restarts=1,
        duration_s=150,
        duplicate_window_s=4,
    )
    chaos = Chaos(config, Console(quiet=True))
    try:
        report = await chaos.run()
    finally:
        await chaos.cleanup()  # its data folder
    kills = sum(
        n
        for kind, n in report.faults.items()
        if kind == "sigkill" or (kind.startswith("kill_") and "not_reached" not in kind)
    )
    assert kills >= 5, report.faults
    assert report.faults["broker_crash_restart"] == 1
    assert sum(n for kind, n in report.faults.items() if kind.startswith("poison_")) == 6
    assert report.faults["replay_after_dedup_window"] >= 1
    assert report.faults["replay_after_dedup_window_dropped_by_broker"] == 0
    assert report.violations == [], "\n".join(report.violations)
    assert report.dead_letters == report.expected_dead_letters
    # 250 orders, the order whose message crashes shipping, a probe order after each of the
    # two broker restarts, a few at the start of the payment outage, a few in each of the
    # schema migration's two phases and two in the key rotation (one sealed for each key).
    assert (
        sum(report.final_states.values())
        == 255 + PROBES_PER_OUTAGE + 2 * ORDERS_PER_MIGRATION_PHASE
    )
    assert all(seconds >= 0 for seconds in report.recovery_s), report.recovery_s
    # Beyond crashes: each fault was injected and ended the way the design says.
    for fault in (
        "provider_outage_payment",
        "hung_provider_shipping",
        "message_that_crashes_its_consumer",
        "broker_outage_long",
        "bad_grpc_request",
        "schema_migration_window",
        "payment_key_rotation",
    ):
        assert report.faults[fault] >= 1, (fault, report.faults)
    assert report.faults["crashed_by_the_message"] >= 2  # killed on more than one delivery
    # The migration window really put orders on the wire in v2, some in both versions at once.
    assert report.faults["schema_migration_orders_in_both"] >= ORDERS_PER_MIGRATION_PHASE, (
        report.faults
    )
    assert (
        report.faults["schema_migration_orders_in_v2"]
        > report.faults["schema_migration_orders_in_both"]
    ), report.faults
    # Orders caught by the payment outage were cancelled (and, per the audit above, refunded
    # exactly once when charged, and their stock released); the steps that gave up say so,
    # as a compensated give-up or as an alarm when the gateway never confirmed the void.
    assert report.caught_by_provider_faults >= 1
    payment_letters = [*report.gave_up, *report.alarms]
    assert any(key.startswith("payment:") for key in payment_letters), payment_letters
    assert any(key.startswith("shipping:") for key in report.gave_up), report.gave_up
    assert report.max_saga_s <= 150 + 60
    # An operator acted on the dead letters while the faults ran (issue 23, "operator actions
    # in chaos"): poison discarded (and the crashing message's letter when it is filed in
    # time, see test_chaos_verdicts.py), alarms replayed as soon as seen, one at least right
    # after the gateway took a void and lost its reply, while it was still down. No replay was
    # refused, no alarm was left open (a violation otherwise), and the audit above covers what
    # every replay did (invariant 10).
    assert report.faults["operator_discard_poison"] >= 1, report.faults
    assert report.faults["operator_replay_alarm"] >= 1, report.operator_log
    assert report.faults["operator_replay_after_lost_void"] >= 1, report.operator_log
    assert report.operator_refusals == []


async def test_a_deliberately_broken_build_is_caught_by_the_checks() -> None:
    # Ack before handling (the auto-ack bug) plus kills between the ack and the commit.
    config = ChaosConfig(
        sagas=120,
        concurrency=16,
        seed=3,
        kills=6,
        broker_restarts=0,
        broker_pauses=0,
        poison=0,
        provider_outages=0,
        hung_providers=0,
        crash_messages=0,
        long_broker_outages=0,
        schema_migrations=0,
        key_rotations=0,
        duration_s=25,
        ack_before_handling=True,
    )
    chaos = Chaos(config, Console(quiet=True))
    try:
        report = await chaos.run()
    finally:
        await chaos.cleanup()
    assert report.faults["kill_after_ack_before_commit"] >= 1
    assert not report.ok
    assert any("never ended" in violation for violation in report.violations)
