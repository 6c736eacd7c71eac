"""Operator commands on a secured broker (`choreo up --secure`: one broker user per service).

`choreo saga`, `dlq list`, `lag`, `status` and `audit` run as separate processes with no CHOREO_*
variables: they find the broker *and* the operator's credentials file through
``<data dir>/system.json`` (which holds the file's path, never a password), as the console
does. A bogus CHOREO_NATS_CREDENTIALS_FILE, or a broker named on the command line (which is
never sent the recorded password), gets a message naming CHOREO_NATS_CREDENTIALS_FILE, no
traceback and a non-zero exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from choreo.broker import port_is_free
from choreo.status import SYSTEM_FILE
from tests.cli import REPO, choreo, choreo_command, clean_env

SERVICES = {"order", "inventory", "payment", "shipping", "notification"}


def choreo_all(commands: list[list[str]], **env: str) -> list[tuple[int, str, str]]:
    """Several commands at once (a refused login takes a few seconds each)."""
    running = [
        subprocess.Popen(
            choreo_command(*args),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(**env),
        )
        for args in commands
    ]
    results = []
    for process in running:
        out, err = process.communicate(timeout=60)
        results.append((process.returncode, out, err))
    return results


def free_base_port() -> int:
    """Five consecutive free ports for the services' gRPC."""
    for base in range(24000 + os.getpid() % 5000, 40000, 7):
        if all(port_is_free(base + offset) for offset in range(5)):
            return base
    raise RuntimeError("no five free ports in a row")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`choreo up --secure` as an operator runs it; yields its data folder."""
    data = tmp_path_factory.mktemp("secure") / "data"
    process = subprocess.Popen(
        choreo_command(
            "up", "--secure", "--data-dir", str(data), "--grpc-base-port", str(free_base_port())
        ),
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (data / SYSTEM_FILE).exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "choreo up --secure wrote no system.json"
            time.sleep(0.2)
        yield data
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


OPERATOR_COMMANDS = [["dlq", "list", "--json"], ["lag", "--json"], ["status", "--json"]]


def test_system_json_names_the_credentials_file_but_holds_no_password(secured: Path) -> None:
    written = json.loads((secured / SYSTEM_FILE).read_text())
    credentials_file = Path(written["nats_credentials_file"])
    assert credentials_file.is_absolute()
    assert credentials_file == (secured / "secrets" / "nats-credentials.json").resolve()
    assert credentials_file.stat().st_mode & 0o777 == 0o600
    passwords = json.loads(credentials_file.read_text())
    assert set(passwords) == SERVICES | {"operator"}
    text = (secured / SYSTEM_FILE).read_text()
    assert not any(password in text for password in passwords.values())


def test_operator_commands_log_in_through_system_json_alone(secured: Path) -> None:
    data = ["--data-dir", str(secured)]
    placed = choreo("order", *data, "place", "--customer", "c-1", "--line", "SKU-MUG:1", "--watch")
    assert placed.returncode == 0, placed.stderr
    assert "SHIPPED" in placed.stdout
    order_id = placed.stdout.split()[0]

    saga = choreo("saga", order_id, "--json", *data)
    assert saga.returncode == 0, saga.stderr
    events = [step["event_type"] for step in json.loads(saga.stdout)["steps"]]
    assert "shop.order.v1.OrderCreated" in events or "shop.order.v2.OrderCreated" in events
    assert any(event.endswith("NotificationSent") for event in events)

    (dlq_code, dlq_out, dlq_err), (lag_code, lag_out, lag_err), (st_code, st_out, st_err) = (
        choreo_all([[*args, *data] for args in OPERATOR_COMMANDS])
    )
    audit = choreo("audit", *data)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "1 orders" in audit.stdout and "0 violation(s)" in audit.stdout
    assert dlq_code == 0, dlq_err
    assert json.loads(dlq_out) == []
    assert lag_code == 0, lag_err
    assert {c["name"].split("__")[0] for c in json.loads(lag_out)} == SERVICES
    assert st_code == 0, st_out + st_err
    status = json.loads(st_out)
    assert status["broker"]["reachable"] is True
    assert {row["process"]: row["health"] for row in status["services"]} == dict.fromkeys(
        SERVICES, "SERVING"
    )
    assert all(row["consumers"] for row in status["services"])


def assert_refused_clearly(results: list[tuple[int, str, str]]) -> None:
    for code, out, err in results:
        assert code != 0, out
        assert "CHOREO_NATS_CREDENTIALS_FILE" in err, err
        assert "Traceback" not in err, err


def test_a_missing_credentials_file_is_named_not_a_traceback(secured: Path) -> None:
    missing = str(secured / "no-such-credentials.json")
    data = ["--data-dir", str(secured)]
    results = choreo_all(
        [["saga", "o-1", *data], *([*args, *data] for args in OPERATOR_COMMANDS)],
        CHOREO_NATS_CREDENTIALS_FILE=missing,
    )
    assert_refused_clearly(results)
    assert all(missing in err and "does not exist" in err for _, _, err in results)


def test_a_wrong_password_is_refused_with_what_to_set(secured: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-credentials.json"
    wrong.write_text(json.dumps({"operator": "not-the-password"}))
    data = ["--data-dir", str(secured)]
    results = choreo_all(
        [["saga", "o-1", *data], *([*args, *data] for args in OPERATOR_COMMANDS)],
        CHOREO_NATS_CREDENTIALS_FILE=str(wrong),
    )
    assert_refused_clearly(results)
    assert all("refused the login of user 'operator'" in err for _, _, err in results)


def test_a_broker_named_on_the_command_line_is_not_sent_the_recorded_password(
    secured: Path,
) -> None:
    url = json.loads((secured / SYSTEM_FILE).read_text())["nats_url"]
    (result,) = choreo_all([["lag", "--nats-url", url, "--data-dir", str(secured)]])
    assert_refused_clearly([result])
    assert "refused a client without login" in result[2]
