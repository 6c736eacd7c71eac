"""`choreo secrets` and `choreo health`: what a deployment's broker, database and container
health checks are built from."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import grpc
import nats
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from choreo import permissions, sealing
from choreo.broker import EmbeddedBroker, free_port
from choreo.cli import main
from choreo.cli.ops import run_health
from services import payment_token


async def test_secrets_give_every_service_a_login_the_broker_accepts(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    assert main(["secrets", "--out", str(out)]) == 0
    for name in ("nats-credentials.json", "postgres-password", "pgpass"):
        assert (out / name).stat().st_mode & 0o777 == 0o600, name
    password = (out / "postgres-password").read_text()
    assert (out / "pgpass").read_text() == f"*:*:*:choreo:{password}\n"
    # One file per user for containers (docker-compose mounts each service's own): each holds
    # that user alone, with the same password as the full file.
    full = json.loads((out / "nats-credentials.json").read_text())
    for user in full:
        own = out / f"nats-credentials-{user}.json"
        assert own.stat().st_mode & 0o777 == 0o600, own
        assert json.loads(own.read_text()) == {user: full[user]}
    assert {"order", permissions.OPERATOR} <= set(full)
    auth = (out / "nats-auth.conf").read_text()
    broker = EmbeddedBroker(store_dir=tmp_path / "js", extra_config=auth)
    await broker.astart()
    try:
        creds = permissions.read_credentials(out / "nats-credentials.json", "order")
        assert creds.password not in auth
        nc = await nats.connect(
            broker.url,
            user=creds.user,
            password=creds.password,
            inbox_prefix=permissions.inbox_prefix("order"),
            allow_reconnect=False,
        )
        assert nc.is_connected
        await nc.close()
    finally:
        await broker.astop()


def test_secrets_write_the_payment_token_key_pair_and_keep_it_when_run_again(
    tmp_path: Path,
) -> None:
    out = tmp_path / "secrets"
    assert main(["secrets", "--out", str(out)]) == 0
    private, public = out / "payment-token-key.pem", out / "payment-token-public.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    sealed = payment_token.seal(
        sealing.load_sealing_key(public, setting="test"), "ord-1", "tok_visa"
    )
    assert main(["secrets", "--out", str(out)]) == 0  # tokens in flight still open
    opening_key = sealing.load_opening_key(private, setting="test")
    assert payment_token.open_token(opening_key, "ord-1", sealed) == "tok_visa"


def test_secrets_without_services_say_what_to_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["secrets", "--out", str(tmp_path), "--services", ","]) == 2
    assert "no service to write credentials for: pass --services" in capsys.readouterr().err


async def test_health_exits_zero_only_when_serving(capsys: pytest.CaptureFixture[str]) -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        serving = argparse.Namespace(address=f"127.0.0.1:{port}", timeout=3.0)
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await run_health(serving) == 0
        await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await run_health(serving) == 1
        assert "NOT_SERVING" in capsys.readouterr().out
    finally:
        await server.stop(None)

    closed = argparse.Namespace(address=f"127.0.0.1:{free_port()}", timeout=1.0)
    assert await run_health(closed) == 1
    assert "UNAVAILABLE" in capsys.readouterr().out
