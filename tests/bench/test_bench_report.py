"""``choreo bench``'s report: saga/faststream best against best, CPU per saga per process with
the services' and the broker's sums, every line at the same open-loop rate, and the tables and
plot rendered from the same runs (no line left out, none in a wrong column)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from services.registry import SERVICE_NAMES
from tools.bench import (
    MODES,
    LoopResult,
    RunResult,
    best_ratios,
    cpu_comparison,
    cpu_table,
    open_loop_table,
    plot,
    ratio_table,
)

pytestmark = pytest.mark.unit

BEST = {"saga": 300.0, "faststream": 240.0, "raw": 600.0, "durable": 500.0}


def run(mode: str, sync_always: bool, cpu_ms: float) -> RunResult:
    result = RunResult(mode, sync_always)
    best = BEST[mode] / (2 if sync_always else 1)
    for level, share in ((4, 0.5), (16, 1.0), (48, 0.9)):
        result.closed.append(
            LoopResult(
                level,
                int(best * share * 3),
                3.0,
                best * share,
                {"p50": 5.0, "p95": 9.0, "p99": 12.0},
            )
        )
    names = [*SERVICE_NAMES, "nats-server"]
    result.cpu_s_per_saga = {name: cpu_ms / 1000 for name in names}
    result.open_loop = {
        "rate_per_s": 150.0,
        "sagas": 450,
        "latency_ms": {"p50": 8.0, "p95": 14.0, "p99": 20.0},
        "cdf_ms": [5.0, 8.0, 20.0],
        "cpu_ms_per_saga": {name: 2 * cpu_ms for name in names},
    }
    return result


@pytest.fixture
def runs() -> list[RunResult]:
    cpu = {"saga": 1.0, "faststream": 0.8, "raw": 0.4, "durable": 0.6}
    return [run(mode, s, cpu[mode]) for s in (False, True) for mode in MODES]


def test_the_headline_is_the_saga_against_the_faststream_build_best_against_best(
    runs: list[RunResult],
) -> None:
    ratios = best_ratios(runs, sync_always=False)
    assert ratios["saga_vs_faststream"] == pytest.approx(300 / 240, abs=1e-3)
    assert ratios["saga_vs_raw"] == pytest.approx(0.5, abs=1e-3)
    assert ratios["faststream_vs_raw"] == pytest.approx(0.4, abs=1e-3)
    assert best_ratios(runs, sync_always=True)["saga_vs_faststream"] == pytest.approx(1.25)


def test_cpu_per_saga_sums_the_services_and_the_broker(runs: list[RunResult]) -> None:
    comparison = cpu_comparison(runs, sync_always=False)
    whole = comparison["whole_run"]
    assert whole["saga"]["order"] == pytest.approx(1.0)
    assert whole["saga"]["services"] == pytest.approx(5.0)
    assert whole["saga"]["total"] == pytest.approx(6.0)
    assert whole["faststream"]["total"] == pytest.approx(4.8)
    assert whole["saga_vs_faststream"] == pytest.approx(1.25)
    opened = comparison["open_loop"]
    assert opened["saga"]["total"] == pytest.approx(12.0)
    assert opened["saga_vs_faststream"] == pytest.approx(1.25)


def test_the_tables_and_the_plot_show_every_line(runs: list[RunResult], tmp_path: Path) -> None:
    console = Console(record=True, width=240)
    for table in (ratio_table(runs), open_loop_table(runs), cpu_table(runs)):
        console.print(table)
    text = console.export_text()
    assert "saga/faststream" in text and "naive" not in text
    assert "1.25" in text  # the best-level ratio, both fsync settings
    for mode in MODES:
        assert mode in text
    plot(runs, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 10_000
