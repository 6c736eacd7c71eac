"""Seeded chaos runs in CI: real processes killed, a real broker crashed, invariants checked."""

from __future__ import annotations

from rich.console import Console

from services.chaos import Chaos, ChaosConfig


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
    report = await Chaos(config, Console(quiet=True)).run()
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
    assert report.violations == []
    assert report.dead_letters == report.expected_dead_letters
    assert sum(report.final_states.values()) == 250
    assert all(seconds >= 0 for seconds in report.recovery_s), report.recovery_s


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
        duration_s=25,
        ack_before_handling=True,
    )
    report = await Chaos(config, Console(quiet=True)).run()
    assert report.faults["kill_after_ack_before_commit"] >= 1
    assert not report.ok
    assert any("never ended" in violation for violation in report.violations)
