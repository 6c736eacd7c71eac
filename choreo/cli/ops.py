"""Operator commands for deployments: ``choreo secrets`` and ``choreo health``.

``choreo secrets --out DIR`` writes what a secured broker and its clients need:
- ``nats-credentials.json`` (mode 0600): one password per service and for the operator; each
  process is given the file's *path* (``CHOREO_NATS_CREDENTIALS_FILE``), never the password;
- ``nats-auth.conf``: the broker's ``authorization`` block with the permissions generated from
  the choreography and only bcrypt hashes of the passwords, for ``include`` in nats-server's
  configuration (``docker-compose.yml`` mounts it on every node);
- ``postgres-password`` (for the server's ``POSTGRES_PASSWORD_FILE``) and ``pgpass`` (the same
  password in libpq's passfile format, for the services' ``PGPASSFILE``), both mode 0600, so
  no database URL ever carries a password;
- whatever installed packages add (entry point group ``choreo.secrets``): the reference system
  adds the X25519 pair its payment token is sealed with.

``choreo health ADDRESS`` asks a service's ``grpc.health.v1.Health`` and exits 0 when it is
SERVING, 1 otherwise: a container health check without extra binaries.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from choreo import permissions
from choreo.errors import ConfigurationError
from choreo.grpc_tls import open_channel
from choreo.service_credentials import write_per_user_credentials

CREDENTIALS_FILE = "nats-credentials.json"
AUTH_CONFIG_FILE = "nats-auth.conf"
POSTGRES_PASSWORD_FILE = "postgres-password"
PGPASS_FILE = "pgpass"


def write_secrets(out: Path, services: Sequence[str]) -> tuple[Path, Path]:
    """Fresh credentials for ``services`` and the operator, and the broker's matching config."""
    users = [*services, permissions.OPERATOR]
    credentials = permissions.generate_credentials(users)
    credentials_file = out / CREDENTIALS_FILE
    permissions.write_credentials_file(credentials_file, credentials)
    auth_file = out / AUTH_CONFIG_FILE
    auth_file.write_text(
        permissions.authorization_config(permissions.system_permissions(services), credentials)
    )
    return credentials_file, auth_file


def write_postgres_secrets(out: Path, user: str) -> None:
    password = secrets.token_urlsafe(24)
    _write_private(out / POSTGRES_PASSWORD_FILE, password)
    _write_private(out / PGPASS_FILE, f"*:*:*:{user}:{password}\n")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def add(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    secrets_command = commands.add_parser(
        "secrets", help="write broker credentials and the matching nats-server auth config"
    )
    secrets_command.add_argument("--out", type=Path, required=True, help="folder to write them to")
    secrets_command.add_argument(
        "--services",
        default=None,
        help="comma-separated service names, each its own broker user (default: every service"
        " that owns a context of the contracts)",
    )
    secrets_command.add_argument(
        "--postgres-user", default="choreo", help="also write a Postgres password for this user"
    )
    health = commands.add_parser("health", help="exit 0 when a service's gRPC health is SERVING")
    health.add_argument("address", help="host:port of the service's gRPC server")
    health.add_argument("--timeout", type=float, default=3.0)
    secrets_command.set_defaults(run=run_secrets)
    health.set_defaults(run=lambda args: asyncio.run(run_health(args)))


def _services(given: str | None) -> list[str]:
    if given is None:
        from choreo import contracts, subjects

        return [subjects.service_of(context) for context in contracts.contexts()]
    return [name.strip() for name in given.split(",") if name.strip()]


def run_secrets(args: argparse.Namespace) -> int:
    from choreo.cli.plugins import secret_writers

    services = _services(args.services)
    if not services:
        raise ConfigurationError(
            "no service to write credentials for: pass --services order,inventory, or install"
            " the contracts (or name them in CHOREO_CONTRACTS)"
        )
    credentials_file, auth_file = write_secrets(args.out, services)
    # Each container gets only its own user (docker-compose.yml mounts these), never the file
    # with every password.
    own_files = write_per_user_credentials(credentials_file, [*services, permissions.OPERATOR])
    write_postgres_secrets(args.out, args.postgres_user)
    print(f"wrote {credentials_file} (mode 0600; give processes its path, not its content)")
    print(
        f"wrote {', '.join(path.name for path in own_files)} (mode 0600, one user each: give"
        " each container only its own)"
    )
    print(f"wrote {auth_file} (include it in nats-server's configuration)")
    print(f"wrote {args.out / POSTGRES_PASSWORD_FILE} and {args.out / PGPASS_FILE} (mode 0600)")
    for write in secret_writers():
        for line in write(args.out):
            print(line)
    return 0


async def run_health(args: argparse.Namespace) -> int:
    async with open_channel(args.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
        except grpc.aio.AioRpcError as exc:
            print(f"{args.address}: {exc.code().name}: {exc.details()}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
