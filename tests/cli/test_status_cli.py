"""The command line finds the system `choreo up` runs (``<data dir>/system.json``), reports its
status, and answers user errors with a message, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from choreo.broker import port_is_free
from choreo.status import SYSTEM_FILE, RunningSystem, write_system_file
from tests.cli import REPO, choreo

SERVICES = {"order", "inventory", "payment", "shipping", "notification"}


def free_base_port() -> int:
    """Five consecutive free ports for the services' gRPC."""
    for base in range(21000 + os.getpid() % 5000, 40000, 7):
        if all(port_is_free(base + offset) for offset in range(5)):
            return base
    raise RuntimeError("no five free ports in a row")


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`choreo up` as an operator runs it; yields its data folder once system.json is there."""
    data = tmp_path_factory.mktemp("up") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHOREO_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "choreo.cli",
            "up",
            "--data-dir",
            str(data),
            "--grpc-base-port",
            str(free_base_port()),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (data / SYSTEM_FILE).exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "choreo up wrote no system.json"
            time.sleep(0.2)
        yield data
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        assert not (data / SYSTEM_FILE).exists(), "choreo up must remove system.json on exit"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_up_writes_where_the_system_is_and_no_secret(up: Path) -> None:
    written = json.loads((up / SYSTEM_FILE).read_text())
    assert written["nats_url"].startswith("nats://127.0.0.1:")
    assert set(written["grpc"]) == SERVICES and set(written["metrics"]) == SERVICES
    assert written["pid"] > 0


@pytest.fixture(scope="module")
def shipped_order(up: Path) -> str:
    """One saga run to its end, for every test that reads what a saga leaves behind."""
    data = ["--data-dir", str(up)]
    placed = choreo("order", *data, "place", "--customer", "c-1", "--line", "SKU-MUG:1", "--watch")
    assert placed.returncode == 0, placed.stderr
    assert "SHIPPED" in placed.stdout
    return placed.stdout.split()[0]


def test_commands_find_the_running_system_by_its_data_folder(up: Path, shipped_order: str) -> None:
    data = ["--data-dir", str(up)]
    order_id = shipped_order

    listed = choreo("order", *data, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [o["order_id"] for o in json.loads(listed.stdout)] == [order_id]
    assert json.loads(choreo("order", *data, "list", "--status", "SHIPPED", "--json").stdout)

    saga = choreo("saga", order_id, *data)
    assert saga.returncode == 0 and "OrderCreated" in saga.stdout

    lag = json.loads(choreo("lag", "--json", *data).stdout)
    assert {c["name"].split("__")[0] for c in lag} == SERVICES
    assert json.loads(choreo("dlq", "list", "--json", *data).stdout) == []


def test_status_shows_health_lag_and_throughput(up: Path, shipped_order: str) -> None:
    # A saga has run (the fixture); metrics and lag are refreshed every few seconds.
    deadline = time.monotonic() + 20
    while True:
        result = choreo("status", "--json", "--data-dir", str(up))
        assert result.returncode == 0, result.stdout + result.stderr
        status = json.loads(result.stdout)
        rows = {row["process"]: row for row in status["services"]}
        if all(row["handled"] for row in rows.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert status["broker"]["reachable"] is True
    assert set(rows) == SERVICES
    for name, row in rows.items():
        assert row["health"] == "SERVING", name
        assert row["handled"] >= 1, name  # every service handled an event of the saga
        assert row["consumers"] and row["pending"] == 0, name

    table = choreo("status", "--data-dir", str(up))
    assert table.returncode == 0
    assert all(f"{name} " in table.stdout for name in SERVICES) and "SERVING" in table.stdout


def test_a_missing_dead_letter_is_a_message(up: Path) -> None:
    result = choreo("dlq", "replay", "999", "--data-dir", str(up))
    assert result.returncode == 1
    assert "no dead letter 999" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["status", "--data-dir", "{data}"],
        ["lag", "--data-dir", "{data}"],
        ["saga", "x", "--data-dir", "{data}"],
        ["dlq", "list", "--data-dir", "{data}"],
        ["audit", "--data-dir", "{data}"],
        ["order", "--data-dir", "{data}", "list"],
    ],
)
def test_nothing_running_says_so(command: list[str], tmp_path: Path) -> None:
    result = choreo(*(arg.replace("{data}", str(tmp_path)) for arg in command))
    assert result.returncode == 2, result.stderr
    assert "no running system found" in result.stderr and "choreo up" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_left_by_a_dead_up_is_not_trusted(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_system_file(
        tmp_path, RunningSystem("nats://127.0.0.1:1", {"order": "127.0.0.1:1"}, {}, gone.pid)
    )
    result = choreo("lag", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert f"pid {gone.pid}, which is gone" in result.stderr


def test_user_errors_end_without_a_traceback() -> None:
    invalid = choreo("order", "list", "--status", "CANCELED")
    assert invalid.returncode == 2
    assert "invalid choice: 'canceled'" in invalid.stderr and "'cancelled'" in invalid.stderr

    version = choreo("--version")
    assert version.returncode == 0 and version.stdout.startswith("choreo ")


def test_flow_into_a_closed_pipe_is_quiet() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHOREO_")}
    # `choreo flow | true`: the reader is gone before the first line is written.
    result = subprocess.run(
        f"{sys.executable} -m choreo.cli flow | true; echo status $" + "{PIPESTATUS[0]}",
        executable="/bin/bash",
        shell=True,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.stdout == "status 141\n"  # like any Unix tool killed by SIGPIPE
    assert result.stderr == ""
