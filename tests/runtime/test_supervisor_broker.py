"""`choreo up` supervises the broker as well as the services, with real processes.

- The broker killed with SIGKILL comes back on the same port and store; the services were not
  restarted (their clients reconnected), and a saga placed afterwards completes.
- A restart that fails for good (its port taken by someone else) stops everything: no child
  process survives, and `up` exits non-zero saying what failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from choreo.broker import port_is_free
from choreo.status import SYSTEM_FILE
from choreo.supervisor import GaveUp, RestartPolicy, RestartTracker

REPO = Path(__file__).resolve().parents[2]
CHOREO = [sys.executable, "-m", "choreo.cli"]
ORDER = ["--customer", "c-1", "--line", "SKU-MUG:1", "--watch"]
SERVICES = {"order", "inventory", "payment", "shipping", "notification"}
# Fast give-up for the tests: three failed restarts in a row, 0.2 s apart at first.
FAST_POLICY = {"CHOREO_RESTART_ATTEMPTS": "3", "CHOREO_RESTART_BACKOFF_S": "0.2"}


def clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("CHOREO_")}, **extra}


def free_base_port() -> int:
    for base in range(41000 + os.getpid() % 3000, 60000, 11):
        if all(port_is_free(base + offset) for offset in range(5)):
            return base
    raise RuntimeError("no five free ports in a row")


@dataclass
class Up:
    process: subprocess.Popen[str]
    data: Path
    json_logs: bool = False

    def children(self) -> dict[str, psutil.Process]:
        """Its live child processes: ``nats-server`` and each service by name."""
        found = {}
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                cmdline = child.cmdline()
            except psutil.NoSuchProcess:
                continue
            if child.name() == "nats-server":
                found["nats-server"] = child
            elif "serve" in cmdline:
                found[cmdline[-1]] = child
        return found

    def system(self) -> dict[str, object]:
        return dict(json.loads((self.data / SYSTEM_FILE).read_text()))


@contextlib.contextmanager
def running_up(
    data: Path, *options: str, env: dict[str, str], ready_s: float = 90
) -> Iterator[subprocess.Popen[str]]:
    """`choreo up` with the fast restart policy until its system.json is written; stopped
    with Ctrl-C (then killed) at the end."""
    process = subprocess.Popen(
        [
            *CHOREO,
            "up",
            *options,
            "--data-dir",
            str(data),
            "--grpc-base-port",
            str(free_base_port()),
        ],
        cwd=REPO,
        env=clean_env(**FAST_POLICY, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + ready_s
        while not (data / SYSTEM_FILE).exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "choreo up wrote no system.json"
            time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def up(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Up]:
    """`choreo up` (with the env of an indirect parameter)."""
    data = tmp_path / "data"
    extra_env = dict(getattr(request, "param", {}))
    with running_up(data, env=extra_env) as process:
        yield Up(process, data, json_logs=extra_env.get("CHOREO_LOG_FORMAT") == "json")


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def assert_an_order_ships(data: Path, timeout_s: float = 120) -> None:
    """`choreo order place --watch` against the running system ends SHIPPED."""
    placed = subprocess.run(
        [*CHOREO, "order", "--data-dir", str(data), "place", *ORDER],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert placed.returncode == 0, placed.stdout + placed.stderr
    assert "SHIPPED" in placed.stdout


def test_a_killed_broker_comes_back_and_sagas_complete_without_restarting_services(
    up: Up,
) -> None:
    before = up.children()
    assert set(before) == SERVICES | {"nats-server"}
    nats_url = str(up.system()["nats_url"])
    port = int(nats_url.rsplit(":", 1)[1])

    before["nats-server"].kill()  # SIGKILL: a crash, no clean shutdown
    before["nats-server"].wait(10)

    def broker_back() -> bool:
        broker = up.children().get("nats-server")
        return broker is not None and broker.pid != before["nats-server"].pid

    wait_until(broker_back, 30, "a new nats-server")
    wait_until(lambda: not port_is_free(port), 15, "the broker listening on its old port")

    assert_an_order_ships(up.data)
    after = up.children()
    for name in SERVICES:
        assert after[name].pid == before[name].pid, f"{name} was restarted"
    assert str(up.system()["nats_url"]) == nats_url, "same broker URL for every tool"
    assert up.process.poll() is None


def assert_everything_stopped(up: Up, started: dict[str, psutil.Process]) -> str:
    """`up` exits non-zero and leaves no child behind; returns what it said."""
    code = up.process.wait(60)
    stderr = up.process.stderr.read() if up.process.stderr else ""
    assert code != 0, stderr
    survivors = [name for name, child in started.items() if child.is_running()]
    # A zombie would mean nobody reaped it; psutil reports it as running: not allowed either.
    assert survivors == [], f"orphans left: {survivors}\n{stderr}"
    assert not (up.data / SYSTEM_FILE).exists()
    assert "Traceback" not in stderr
    return stderr


def kill_and_squat(up: Up, victim: psutil.Process, port: int) -> socket.socket:
    """Kill ``victim`` and take its port, with `up` paused meanwhile so that the squatter
    surely wins the port (a quick restart, the first is immediate, would get there first)."""
    squatter = socket.socket()
    supervisor = psutil.Process(up.process.pid)
    supervisor.suspend()
    try:
        victim.kill()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # The dead process stays a zombie while `up` is paused, but its socket is gone as
        # soon as the kernel has torn it down.
        deadline = time.monotonic() + 10
        while True:
            try:
                squatter.bind(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    squatter.close()
                    raise
                time.sleep(0.05)
        squatter.listen()
    finally:
        supervisor.resume()
    return squatter


def test_a_broker_that_cannot_restart_stops_everything(up: Up) -> None:
    started = up.children()
    port = int(str(up.system()["nats_url"]).rsplit(":", 1)[1])
    squatter = kill_and_squat(up, started["nats-server"], port)
    try:
        stderr = assert_everything_stopped(up, started)
    finally:
        squatter.close()
    assert f"nats-server :{port} could not be restarted (3 attempts in a row)" in stderr
    assert f"NATS port {port}" in stderr and "stopping everything" in stderr


@pytest.mark.parametrize("up", [{}, {"CHOREO_LOG_FORMAT": "json"}], indirect=True, ids=str)
def test_a_service_that_cannot_restart_stops_everything(up: Up) -> None:
    started = up.children()
    address = str(dict(up.system()["grpc"])["payment"])  # type: ignore[call-overload]
    port = int(address.rsplit(":", 1)[1])
    squatter = kill_and_squat(up, started["payment"], port)
    try:
        stderr = assert_everything_stopped(up, started)
    finally:
        squatter.close()
    assert "payment could not be restarted (3 attempts in a row)" in stderr
    if up.json_logs:
        lines = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
        gave_up = [line for line in lines if "could not be restarted" in str(line["message"])]
        assert [line["level"] for line in gave_up] == ["ERROR"]
        assert {line["logger"] for line in lines} == {"choreo.up"}


def test_the_restart_policy_backs_off_then_gives_up() -> None:
    policy = RestartPolicy(attempts=3, backoff_s=1.0, max_backoff_s=3.0, crash_loop=2)
    tracker = RestartTracker("svc", policy)
    assert tracker.failed(100.0, RuntimeError("boom")) == 1.0
    assert not tracker.due(100.5) and tracker.due(101.0)
    assert tracker.failed(101.0, RuntimeError("boom")) == 2.0
    with pytest.raises(GaveUp, match=r"3 attempts in a row.*boom"):
        tracker.failed(103.0, RuntimeError("boom"))

    looping = RestartTracker("svc", policy)
    looping.succeeded(0.0)
    looping.failed(1.0, RuntimeError("once"))
    looping.succeeded(2.0)  # a success resets the run of failures
    assert looping.failures == 0
    with pytest.raises(GaveUp, match="crash loop"):
        looping.succeeded(3.0)
    spaced = RestartTracker("svc", RestartPolicy(crash_loop=1, window_s=10.0))
    spaced.succeeded(0.0)
    spaced.succeeded(20.0)  # the first one is out of the window: no loop
