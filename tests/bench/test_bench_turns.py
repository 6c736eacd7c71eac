"""``choreo bench`` measures the saga and the FastStream build side by side, in turns (A B, then
B A), so that a drift of the machine's speed weighs on both lines alike: both systems really
run, each line's figures come from its own windows, and the open loop runs at half the saga's
best rate for both."""

from __future__ import annotations

import argparse

from rich.console import Console

from services.registry import SERVICE_NAMES
from tools.bench import Bench, Line, RunResult, _turns


def _line(mode: str) -> Line:
    async def start() -> str:
        return ""

    return Line(RunResult(mode, False), start, None, {})  # type: ignore[arg-type]


def test_each_round_reverses_the_order_of_the_lines() -> None:
    saga, faststream = _line("saga"), _line("faststream")
    assert _turns([saga, faststream], 4) == [
        [saga, faststream],
        [faststream, saga],
        [saga, faststream],
        [faststream, saga],
    ]
    assert _turns([saga], 1) == [[saga]]


async def test_the_pair_runs_both_lines_in_turns_with_their_own_figures() -> None:
    bench = Bench(Console(quiet=True), argparse.Namespace(quick=True, soak=0))
    bench.levels, bench.seconds, bench.warmup = [2], 2.0, 0.5
    saga, faststream = await bench.run_pair(sync_always=False)
    assert (saga.mode, faststream.mode) == ("saga", "faststream")
    for result in (saga, faststream):
        (level,) = result.closed
        assert level.concurrency == 2 and level.sagas > 0 and level.throughput > 0
        # Two windows of a second each, and the sagas in flight at each window's end.
        assert 2.0 <= level.seconds < 6.0
        assert result.open_loop["rate_per_s"] == round(saga.best / 2, 2)
        assert result.open_loop["sagas"] > 0
        processes = {*SERVICE_NAMES, "nats-server"}
        assert set(result.cpu_s_per_saga) == processes
        assert set(result.open_loop["cpu_ms_per_saga"]) == processes
        assert result.cpu_s_per_saga["nats-server"] > 0
        assert set(result.rss_mb_after) == processes
