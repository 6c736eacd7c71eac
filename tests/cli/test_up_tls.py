"""TLS end to end from ``choreo up --tls``: a CA and certificates made in the data folder, every
service serving gRPC with them, the health checks of ``up`` and the command line next to it
speaking TLS; a plaintext client is refused. With ``--mtls``, a client without a certificate
of that CA is refused too.

Before, ``choreo up`` with TLS settings failed after 60 s with a traceback: its health checks
spoke plaintext.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from choreo.grpc_tls import client_credentials
from tests.cli.test_up_ownership import start_up, stop, wait_running


def choreo(data_dir: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """A command of the command line next to the system: no TLS flag or variable given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHOREO_")}
    return subprocess.run(
        [sys.executable, "-m", "choreo.cli", args[0], "--data-dir", str(data_dir), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


async def health(address: str, credentials: grpc.ChannelCredentials | None) -> int:
    channel = (
        grpc.aio.insecure_channel(address)
        if credentials is None
        else grpc.aio.secure_channel(address, credentials)
    )
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return int(reply.status)


def refused(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        asyncio.run(health(address, credentials))
    return caught.value.code()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def tls_up(data_dir: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, object]]:
    up = start_up(data_dir, f"--{request.param}")
    try:
        yield wait_running(up, data_dir)
    finally:
        stop(up)
    assert up.returncode == 0, up.communicate()
    # Stopped: the command line no longer reaches for the system's TLS files.
    assert not (data_dir / "grpc-tls.json").exists()


@pytest.mark.parametrize("tls_up", ["tls"], indirect=True)
def test_up_with_tls_runs_a_saga_over_tls_and_refuses_plaintext(
    tls_up: dict[str, object], data_dir: Path
) -> None:
    grpc_addresses: dict[str, str] = dict(tls_up["grpc"])  # type: ignore[call-overload]
    client_env = json.loads((data_dir / "grpc-tls.json").read_text())
    assert set(client_env) == {"CHOREO_GRPC_TLS_CA_FILE"}
    trusted = client_credentials(client_env)

    # Every service answers over TLS, and refuses a plaintext client.
    for process, address in grpc_addresses.items():
        assert asyncio.run(health(address, trusted)) == 1, process  # SERVING
        assert refused(address, None) == grpc.StatusCode.UNAVAILABLE, process

    # The command line finds the system's CA by itself: place an order, follow it to its end.
    placed = choreo(
        data_dir, "order", "place", "--customer", "c-tls", "--line", "SKU-MUG:1", "--watch"
    )
    assert placed.returncode == 0, placed.stderr + placed.stdout
    assert "SHIPPED" in placed.stdout and "customer notified" in placed.stdout, placed.stdout

    status = choreo(data_dir, "status")
    assert status.returncode == 0, status.stderr + status.stdout
    assert "SERVING" in status.stdout, status.stdout


@pytest.mark.parametrize("tls_up", ["mtls"], indirect=True)
def test_up_with_mtls_refuses_a_client_without_a_certificate_of_its_ca(
    tls_up: dict[str, object], data_dir: Path
) -> None:
    order = dict(tls_up["grpc"])["order"]  # type: ignore[call-overload]
    client_env = json.loads((data_dir / "grpc-tls.json").read_text())
    ca_only = {"CHOREO_GRPC_TLS_CA_FILE": client_env["CHOREO_GRPC_TLS_CA_FILE"]}

    assert refused(order, None) == grpc.StatusCode.UNAVAILABLE
    assert refused(order, client_credentials(ca_only)) == grpc.StatusCode.UNAVAILABLE
    assert asyncio.run(health(order, client_credentials(client_env))) == 1

    listed = choreo(data_dir, "order", "list")
    assert listed.returncode == 0, listed.stderr + listed.stdout

    # Elsewhere (no system's TLS files to adopt), a plaintext client is told why it fails.
    elsewhere = data_dir.parent / "elsewhere"
    elsewhere.mkdir()
    stranger = choreo(elsewhere, "order", "--address", order, "list")
    assert stranger.returncode == 2, stranger.stderr + stranger.stdout
    assert "CHOREO_GRPC_TLS_CA_FILE" in stranger.stderr, stranger.stderr


def test_up_with_tls_settings_but_no_ca_for_its_checks_says_so_at_once(data_dir: Path) -> None:
    """The finding's case: server settings only. Refused in seconds with what to set, not a
    traceback after 60 s of plaintext health checks against TLS servers."""
    (data_dir / "tls").mkdir(parents=True)
    from choreo.grpc_tls import ensure_local_pki

    pki = ensure_local_pki(data_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHOREO_")}
    env |= pki.server_environ(mutual=False)
    result = subprocess.run(
        [sys.executable, "-m", "choreo.cli", "up", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "CHOREO_GRPC_TLS_CA_FILE" in result.stderr and "Traceback" not in result.stderr
