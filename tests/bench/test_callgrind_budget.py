"""The callgrind budget's loop, without valgrind: a few events through the real layers, and the
table and JSON it reports (so the tool does not rot while nobody runs it under valgrind)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tools.callgrind import budget

CHOREO_KEYS = [key for key, _ in budget.CHOREO_LAYERS]
FASTSTREAM_KEYS = [key for key, _ in budget.FASTSTREAM_LAYERS]


def run(tmp_path: Path, *extra: str) -> tuple[dict[str, Any], dict[str, Any]]:
    output = tmp_path / "budget.json"
    report = budget.main(
        ["--no-valgrind", "--events", "6", "--batch", "4", "--output", str(output), *extra]
    )
    return report, json.loads(output.read_text())


def test_every_choreo_layer_runs_the_events_and_is_reported(tmp_path: Path) -> None:
    report, written = run(tmp_path, "--no-faststream")
    assert written == json.loads(json.dumps(report))  # what is printed is what is written
    assert written["events"] == 6 and written["batch"] == 4 and written["complete"]
    assert written["unit"].startswith("ns")
    # Every stage really went through the runtime: decoded, valid, committed, published, acked.
    assert written["counts"] == {
        "receive": 6,
        "valid": 6,
        "outbox_rows": 6,
        "published": 6,
        "handled": 6,
    }
    choreo = written["choreo"]
    assert list(choreo["layers"]) == CHOREO_KEYS
    assert choreo["total"] == pytest.approx(sum(choreo["layers"].values()))
    assert "faststream" not in written
    table = budget.format_table(written, "ns")
    assert [line.split()[0] for line in table.splitlines()[1:]] == [*CHOREO_KEYS, "total"]


def test_the_faststream_handler_runs_beside_it(tmp_path: Path) -> None:
    _, written = run(tmp_path)
    assert written["counts"]["faststream_handled"] == 6
    faststream = written["faststream"]
    assert list(faststream["layers"]) == FASTSTREAM_KEYS
    assert faststream["total"] == pytest.approx(sum(faststream["layers"].values()))
    assert "choreo / faststream" in budget.format_table(written, "ns")


def test_stage_costs_come_from_the_dumps_their_closing_marks_trigger(tmp_path: Path) -> None:
    """Under callgrind each mark dumps what ran since the previous one; a stage's cost is the
    dump its own closing mark makes, never the harness's stretch before it."""
    meter = budget.Meter()
    with meter.stage("a"):
        pass
    with meter.stage("b"):
        pass
    assert meter.dumps == {"a": 2, "b": 4}
    for number, total in ((1, 10), (2, 2000), (3, 10), (4, 4000)):
        text = f"desc: Trigger: --dump-before={budget.MARKER}\ntotals: {total}\n"
        (tmp_path / f"callgrind.out.42.{number}").write_text(text)
    (tmp_path / "callgrind.out.42").write_text("totals: 5\n")  # after the last mark: ignored
    totals = budget.callgrind_totals(tmp_path, 42)
    assert {name: totals[number] for name, number in meter.dumps.items()} == {
        "a": 2000,
        "b": 4000,
    }


def test_layers_are_told_apart_by_difference_and_the_fake_server_taken_off() -> None:
    stages = {
        "choreo.receive": 10.0,
        "choreo.decode": 1.0,
        "choreo.validate": 2.0,
        "choreo.unit_of_work": 20.0,
        "choreo.domain_sql": 26.0,
        "choreo.emit": 40.0,
        "choreo.relay": 33.0,
        "choreo.ack": 5.0,
        "choreo.end_to_end": 120.0,
        "wire.publish": 3.0,
        "wire.ack": 1.0,
    }
    layers = budget.layer_budget(stages)["choreo"]
    assert layers["layers"]["domain_sql"] == 6.0
    assert layers["layers"]["emit"] == 14.0
    assert layers["layers"]["relay"] == 30.0
    assert layers["layers"]["ack"] == 4.0
    assert layers["total"] == 116.0
    assert layers["layers"]["consumer"] == 116.0 - (10 + 1 + 2 + 20 + 6 + 14 + 30 + 4)
