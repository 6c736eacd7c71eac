"""The CLI fails with a message that says what is wrong and how to fix it, and exit status 2."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.cli import choreo


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_up_with_a_taken_grpc_port_names_the_port_and_the_flag(
    taken_port: int, tmp_path: Path
) -> None:
    result = choreo("up", "--grpc-base-port", str(taken_port), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert f"gRPC port {taken_port}" in result.stderr
    assert "--grpc-base-port" in result.stderr
    assert processes_using(tmp_path) == [], "the broker it started must not outlive it"


def processes_using(folder: Path) -> list[str]:
    """Command lines of live processes that name ``folder`` (e.g. an orphaned nats-server)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(folder) in cmdline:
            found.append(cmdline)
    return found


def test_up_with_a_taken_nats_port_names_the_port_and_the_flag(
    taken_port: int, tmp_path: Path
) -> None:
    result = choreo("up", "--nats-port", str(taken_port), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert f"NATS port {taken_port}" in result.stderr and "--nats-port" in result.stderr


def test_up_with_a_bad_catalog_names_the_file_and_the_fix(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text('{"currency": "USD", "products": [{"sku": "A"}]}')
    result = choreo("up", "--catalog", str(catalog), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2
    assert str(catalog) in result.stderr and "Fix:" in result.stderr
    assert not (tmp_path / "data").exists(), "nothing may start when the catalog is bad"


def test_an_unreachable_broker_says_how_to_get_one(taken_port: int) -> None:
    result = choreo("dlq", "list", "--nats-url", "nats://127.0.0.1:1")
    assert result.returncode == 2
    assert "unreachable at nats://127.0.0.1:1" in result.stderr
    assert "choreo up" in result.stderr


def test_no_order_service_says_how_to_start_one() -> None:
    result = choreo("order", "--address", "127.0.0.1:1", "get", "some-order")
    assert result.returncode == 2
    assert "choreo up" in result.stderr and "--address" in result.stderr


def test_a_malformed_line_says_how_to_write_it() -> None:
    result = choreo(
        "order", "--address", "127.0.0.1:1", "place", "--customer", "c", "--line", "SKU-MUG"
    )
    assert result.returncode == 2
    assert "SKU:QUANTITY" in result.stderr


def test_the_flow_graph_is_printed_from_the_contracts() -> None:
    result = choreo("flow")
    assert result.returncode == 0
    assert result.stdout.startswith("flowchart")
    assert "OrderCreated" in result.stdout and "PaymentRefunded" in result.stdout


def test_serve_with_an_empty_broker_url_says_what_to_set(tmp_path: Path) -> None:
    # Before: nats-py reconnected to nothing forever, silently, and the process ignored SIGTERM.
    result = choreo(
        "serve",
        "inventory",
        CHOREO_NATS_URL="",
        CHOREO_DATABASE_URL=f"sqlite:///{tmp_path / 'inventory.db'}",
    )
    assert result.returncode == 2, result.stderr
    assert "CHOREO_NATS_URL is empty" in result.stderr
    assert "Traceback" not in result.stderr
