"""``choreo console`` started wrong says what to fix, without a traceback, and serves nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from choreo.broker import EmbeddedBroker


def console(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "choreo.cli", "console", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "choreo console: http" not in result.stdout


def test_with_nothing_running_it_says_how_to_find_the_system(tmp_path: Path) -> None:
    refused(console("--data-dir", str(tmp_path)), "no running system found")


def test_a_port_out_of_range_is_refused(broker: EmbeddedBroker) -> None:
    refused(console("--port", "70000", "--nats-url", broker.url), "--port 70000")


def test_a_taken_port_is_named(broker: EmbeddedBroker) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused(
            console("--port", str(port), "--nats-url", broker.url),
            f"cannot listen on 127.0.0.1:{port}",
        )


def test_an_unreachable_broker_is_named() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: nothing answers there
        refused(console("--nats-url", f"nats://127.0.0.1:{port}"), "NATS broker unreachable")
