"""The before/after comparison's measurement (``scripts/bench_before_after.py --measure``), run
on this tree as it runs inside each build: a real system, real sagas, figures that add up."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench_before_after.py"


def test_the_measurement_completes_sagas_and_reports_cpu_per_saga() -> None:
    command = [sys.executable, str(SCRIPT), "--measure", "--levels", "2,4", "--seconds", "1.5"]
    command += ["--rate", "10"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert [level["clients"] for level in figures["closed_loop"]] == [2, 4]
    for level in figures["closed_loop"]:
        assert level["sagas_per_s"] > 0 and level["cpu_ms_per_saga"] > 0
    assert figures["best"] in figures["closed_loop"]
    opened = figures["open_loop"]
    # The open loop ended the sagas it started at its rate (10/s for 3 s), not a few of them.
    assert opened["sagas"] >= 0.8 * 10 * opened["seconds"]
    assert 0 < opened["latency_ms"]["p50"] <= opened["latency_ms"]["p99"]
    by_process = opened["cpu_ms_per_saga_by_process"]
    # Every process of a saga, the broker included, spent CPU on it: a reading that missed a
    # process (a stale pid, a counter read twice) shows as a zero here.
    services = ["order", "inventory", "payment", "shipping", "notification"]
    assert sorted(by_process) == sorted([*services, "nats-server"])
    assert all(by_process[name] > 0 for name in by_process), by_process
    assert abs(sum(by_process.values()) - opened["cpu_ms_per_saga"]) < 0.1


def test_the_driver_asks_for_the_commit_to_compare_with() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "name the earlier commit" in done.stderr


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_before_after", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_interleaved_windows_take_turns_on_two_systems_up_at_once() -> None:
    """``--interleave`` on two systems of this tree: each gets its closed and open windows
    (A B B A), and its figures are read over its own windows only."""
    script = _script()
    args = argparse.Namespace(levels="2", seconds=2.0, rate=10.0, pairs=1, cluster=1)
    before = script.Served("before", REPO, 1)
    try:
        after = script.Served("after", REPO, 1)
        try:
            assert before.up["pids"] != after.up["pids"]  # two systems, not one twice
            result = await script.interleave(before, after, args)
        finally:
            after.stop()
    finally:
        before.stop()
    for served in (before, after):
        assert [w["kind"] for w in served.windows] == ["closed", "closed", "open", "open"]
    for build in ("before", "after"):
        closed, opened = result[build]["closed_loop"], result[build]["open_loop"]
        assert closed["clients"] == 2 and closed["sagas"] > 0 and closed["cpu_ms_per_saga"] > 0
        # 10/s for two windows of 1 s: the open loop ended the sagas it started.
        assert opened["sagas"] == 20
        assert 0 < opened["latency_ms"]["p50"] <= opened["latency_ms"]["p99"]
        assert opened["cpu_ms_per_saga"] > 0
