"""The whole system as processes: an embedded broker (unless a URL is given) and the five
services, each ``choreo serve NAME`` with its own database: a SQLite file under the data folder
(the default), or, with ``store="postgres"``, a database of its own on a Postgres server
(``<name>_<service>`` next to the database named in the URL, created here if missing; each
service applies its schema migrations when it starts).

``choreo up``, ``make demo``, the end-to-end tests, the benchmark and the chaos runs all start
the system through :class:`System`, so they run exactly what an operator runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats

from choreo import permissions, sealing
from choreo.broker import EmbeddedBroker, free_port, port_is_free
from choreo.cluster import EmbeddedCluster, seed_urls
from choreo.errors import ConfigurationError
from choreo.redact import redact_url
from choreo.supervisor import ProcessSpec, RestartPolicy, RestartTracker, Supervisor
from services import payment_token
from services.registry import PORT_OFFSETS, SERVICE_NAMES

DEFAULT_GRPC_BASE_PORT = 50051
DEFAULT_POSTGRES_URL = "postgresql://127.0.0.1:5432/choreo"
STORES = ("sqlite", "postgres")


@dataclass
class SystemConfig:
    data_dir: Path
    nats_url: str | None = None  # None: start an embedded broker
    nats_port: int = 0
    grpc_base_port: int | None = DEFAULT_GRPC_BASE_PORT  # None: free ports
    host: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)  # extra CHOREO_* for every service
    sync_always: bool = False
    store: str = "sqlite"  # or "postgres"
    # Postgres: the server, and the name the services' databases start with (``/choreo`` gives
    # choreo_order, choreo_inventory, ...). Ignored for SQLite.
    database_url: str = DEFAULT_POSTGRES_URL
    # Processes per service (Postgres only): competing consumers on one database.
    replicas: int = 1
    # Least privilege on the bus (choreo.permissions): one broker user per service, passwords
    # in <data dir>/secrets/nats-credentials.json (mode 0600), hashes in the broker's config.
    secure: bool = False
    # Embedded broker nodes: 1, or a JetStream cluster on loopback (3: R3 streams).
    cluster: int = 1
    # What runs each service, after the interpreter: ``choreo serve``, or the benchmark's
    # naive build (``-m services.naive``).
    service_argv: tuple[str, ...] = ("-m", "choreo.cli", "serve")
    # How `supervise` restarts a dead broker node or service, and when it gives up.
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)


def replica_name(service: str, replica: int) -> str:
    """``order`` for the first replica, ``order-2``, ``order-3`` ... for the others."""
    return service if replica == 0 else f"{service}-{replica + 1}"


def postgres_database_urls(base_url: str) -> dict[str, str]:
    """One database per service, named after the database in ``base_url``."""
    parts = urlsplit(base_url)
    prefix = parts.path.strip("/") or "choreo"
    return {name: urlunsplit(parts._replace(path=f"/{prefix}_{name}")) for name in SERVICE_NAMES}


def sqlite_database_urls(data_dir: Path) -> dict[str, str]:
    return {name: f"sqlite:///{data_dir.resolve() / (name + '.db')}" for name in SERVICE_NAMES}


async def create_postgres_databases(urls: Mapping[str, str]) -> list[str]:
    """Create the databases that do not exist yet; returns the names created.

    Connects to the server's ``postgres`` maintenance database (``CREATE DATABASE`` cannot run
    inside the target database, which may not exist yet).
    """
    created = []
    for url in urls.values():
        parts = urlsplit(url)
        name = parts.path.strip("/")
        admin_url = urlunsplit(parts._replace(path="/postgres"))
        try:
            admin = await asyncpg.connect(admin_url)
        except (OSError, asyncpg.PostgresError) as exc:
            raise ConfigurationError(
                f"cannot reach Postgres at {redact_url(admin_url)} to create {name}:"
                f" {redact_url(str(exc))}; check --database-url / CHOREO_UP_DATABASE_URL"
            ) from None
        try:
            exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                try:
                    await admin.execute(f'CREATE DATABASE "{name}"')
                    created.append(name)
                except asyncpg.DuplicateDatabaseError:
                    pass  # another start-up created it between our look and our create
        finally:
            await admin.close()
    return created


async def drop_postgres_databases(urls: Iterable[str]) -> None:
    """Drop the services' databases (a throwaway system's: benchmarks, tests)."""
    for url in urls:
        parts = urlsplit(url)
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            name = parts.path.strip("/")
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


class System:
    def __init__(self, config: SystemConfig) -> None:
        self.config = config
        self.broker: EmbeddedBroker | None = None
        self.cluster: EmbeddedCluster | None = None
        self.credentials_file: Path | None = None
        self.supervisor: Supervisor | None = None
        self.addresses: dict[str, str] = {}  # service -> its first replica's gRPC address
        self.replica_addresses: dict[str, str] = {}  # process name -> gRPC address
        self.metrics_addresses: dict[str, str] = {}  # process name -> host:port of /metrics
        if config.replicas < 1:
            raise ConfigurationError(f"--replicas {config.replicas}: at least 1 per service")
        if config.replicas > 1 and config.store != "postgres":
            raise ConfigurationError(
                f"--replicas {config.replicas} needs --store postgres: replicas share their"
                " service's database, and a SQLite file takes one process at a time"
            )
        if config.cluster < 1:
            raise ConfigurationError(f"--cluster {config.cluster}: at least 1 broker node")
        if config.cluster > 1 and config.nats_url:
            raise ConfigurationError("--cluster starts embedded nodes: it excludes --nats-url")
        if config.store not in STORES:
            raise ConfigurationError(
                f"store {config.store!r} is not known: use --store sqlite or --store postgres"
            )
        if config.store == "postgres" and not config.database_url.startswith(
            ("postgresql://", "postgres://")
        ):
            raise ConfigurationError(
                f"--database-url {redact_url(config.database_url)!r} is not a postgresql:// URL"
            )

    @property
    def database_urls(self) -> dict[str, str]:
        """Each service's database URL (with credentials: never print these unredacted)."""
        if self.config.store == "postgres":
            return postgres_database_urls(self.config.database_url)
        return sqlite_database_urls(self.config.data_dir)

    @property
    def nats_url(self) -> str:
        """The broker's URL, or a cluster's comma-separated seed URLs."""
        if self.config.nats_url:
            return self.config.nats_url
        if self.cluster is not None:
            return self.cluster.url
        assert self.broker is not None, "the system is not started"
        return self.broker.url

    async def connect(self, **options: Any) -> Any:
        """A NATS connection for operator tools (audit, chaos, demo): the operator user on a
        secured broker, every seed of a cluster."""
        if self.credentials_file is not None:
            creds = permissions.read_credentials(self.credentials_file, permissions.OPERATOR)
            options = {"user": creds.user, "password": creds.password, **options}
        return await nats.connect(seed_urls(self.nats_url), **options)

    def _start_broker(self) -> None:
        data = self.config.data_dir
        auth = ""
        if self.config.secure:
            users = [*SERVICE_NAMES, permissions.OPERATOR]
            credentials = permissions.generate_credentials(users)
            self.credentials_file = data / "secrets" / "nats-credentials.json"
            permissions.write_credentials_file(self.credentials_file, credentials)
            auth = permissions.authorization_config(
                permissions.system_permissions(SERVICE_NAMES), credentials
            )
        if self.config.cluster > 1:
            self.cluster = EmbeddedCluster(
                store_root=data / "cluster",
                size=self.config.cluster,
                sync_always=self.config.sync_always,
                extra_config=auth,
                log_dir=data / "logs",
            )
            self.cluster.start()
            return
        self.broker = EmbeddedBroker(
            store_dir=data / "jetstream",
            port=self.config.nats_port,
            sync_always=self.config.sync_always,
            log_file=data / "logs" / "nats-server.log",
            extra_config=auth,
        )
        self.broker.start()

    def _ports(self) -> dict[str, int]:
        base = self.config.grpc_base_port
        if base is None:
            return {name: free_port(self.config.host) for name in SERVICE_NAMES}
        ports = {name: base + PORT_OFFSETS[name] for name in SERVICE_NAMES}
        for name, port in ports.items():
            if not port_is_free(port, self.config.host):
                raise ConfigurationError(
                    f"gRPC port {port} for the {name} service is taken: choose another base"
                    " with --grpc-base-port / CHOREO_GRPC_BASE_PORT (the five services use"
                    " base..base+4), or stop what is listening there"
                )
        return ports

    def specs(self) -> list[ProcessSpec]:
        data = self.config.data_dir.resolve()
        databases = self.database_urls
        specs = []
        for name, first_port in self._ports().items():
            for replica in range(self.config.replicas):
                # The first replica keeps the service's stable address (what clients use);
                # the others listen on free ports. All share the durable consumers (so they
                # compete for events) and the database (whose inbox key keeps an event from
                # being applied twice).
                port = first_port if replica == 0 else free_port(self.config.host)
                specs.append(self._spec(name, replica_name(name, replica), port, databases, data))
        return specs

    def _spec(
        self, name: str, process: str, port: int, databases: Mapping[str, str], data: Path
    ) -> ProcessSpec:
        address = f"{self.config.host}:{port}"
        self.replica_addresses[process] = address
        if process == name:
            self.addresses[name] = address
        metrics_port = free_port(self.config.host)
        self.metrics_addresses[process] = f"{self.config.host}:{metrics_port}"
        env = {
            "CHOREO_NATS_URL": self.nats_url,
            "CHOREO_DATABASE_URL": databases[name],
            "CHOREO_DATA_DIR": str(data),
            "CHOREO_GRPC_HOST": self.config.host,
            "CHOREO_GRPC_PORT": str(port),
            "CHOREO_METRICS_PORT": str(metrics_port),
        }
        if self.credentials_file is not None:
            env["CHOREO_NATS_CREDENTIALS_FILE"] = str(self.credentials_file.resolve())
        if self.config.cluster > 1:
            env["CHOREO_STREAM_REPLICAS"] = str(min(3, self.config.cluster))
        env.update(self._token_key_env(name, data))
        env.update(self.config.env)
        return ProcessSpec(
            name=process,
            argv=[sys.executable, *self.config.service_argv, name],
            env=env,
            grpc_address=address,
            log_path=data / "logs" / f"{process}.log",
        )

    def _token_key_env(self, service: str, data: Path) -> dict[str, str]:
        """The payment token's key file for the one service that needs it: the public key for
        order (it seals), the private key for payment (it opens); nobody else gets either.
        Key files named in the environment win over the data folder's pair."""
        private, public = payment_token.default_key_files(data)
        if service == "order" and not self._configured(payment_token.PUBLIC_KEY_SETTING):
            return {payment_token.PUBLIC_KEY_SETTING: str(public)}
        if service == "payment" and not self._configured(payment_token.PRIVATE_KEY_SETTING):
            return {payment_token.PRIVATE_KEY_SETTING: str(private)}
        return {}

    def _configured(self, setting: str) -> bool:
        # The supervisor passes this process's environment on to every service.
        return bool(self.config.env.get(setting) or os.environ.get(setting))

    async def start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        if not (
            self._configured(payment_token.PUBLIC_KEY_SETTING)
            and self._configured(payment_token.PRIVATE_KEY_SETTING)
        ):
            # No key files configured: the data folder's pair, created once (mode 0600).
            sealing.ensure_keypair(*payment_token.default_key_files(self.config.data_dir.resolve()))
        (self.config.data_dir / "logs").mkdir(exist_ok=True)
        if self.config.store == "postgres":
            await create_postgres_databases(self.database_urls)
        if not self.config.nats_url:
            self._start_broker()
        try:
            # Building the specs checks the gRPC ports: a taken one must not leave the broker.
            self.supervisor = Supervisor(self.specs(), self.config.restart_policy)
            await self.supervisor.start_all()
        except BaseException:
            self.stop()
            raise

    @property
    def broker_nodes(self) -> list[EmbeddedBroker]:
        """The embedded broker processes (none when the system uses an outside broker)."""
        if self.cluster is not None:
            return list(self.cluster.nodes)
        return [self.broker] if self.broker is not None else []

    async def supervise(
        self, stop: asyncio.Event, say: Callable[[str], None] = print, tick_s: float = 0.5
    ) -> None:
        """Until ``stop``: restart a broker node or a service that died, with backoff.

        A broker node comes back on the same port with the same store, so the services'
        clients reconnect by themselves and their durable consumers resume: no service is
        restarted for it. Services are restarted only while every broker node is up.
        Raises :class:`GaveUp` when a restart fails for good; the caller then stops
        everything (``choreo up`` does, and exits non-zero).
        """
        assert self.supervisor is not None, "the system is not started"
        trackers = {
            id(node): RestartTracker(f"nats-server :{node.port}", self.config.restart_policy)
            for node in self.broker_nodes
        }
        while not stop.is_set():
            brokers_up = True
            for node in self.broker_nodes:
                if not node.running and not await self._restart_broker(
                    node, trackers[id(node)], say
                ):
                    brokers_up = False
            if brokers_up and not await self._until_stopped(
                self.supervisor.restart_dead(say), stop
            ):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick_s)

    @staticmethod
    async def _until_stopped(work: Coroutine[Any, Any, object], stop: asyncio.Event) -> bool:
        """Run ``work`` unless ``stop`` comes first (a restart may wait a minute for a service
        to become healthy; Ctrl-C must not); False if it was cut short."""
        working = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not working.done():
            working.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await working
            return False
        working.result()  # GaveUp goes to the caller
        return True

    async def _restart_broker(
        self, node: EmbeddedBroker, tracker: RestartTracker, say: Callable[[str], None]
    ) -> bool:
        """Start a dead node again if its backoff has passed; True once it is up."""
        if not tracker.due(time.monotonic()):
            return False
        say(f"{tracker.name} exited; restarting it on the same port and store")
        try:
            await asyncio.to_thread(node.start)
        except Exception as exc:  # the port is taken, the store is damaged, it hangs ...
            node.kill()
            delay = tracker.failed(time.monotonic(), exc)
            say(f"{tracker.name} restart failed ({redact_url(str(exc))}); next try in {delay:.1f}s")
            return False
        tracker.succeeded(time.monotonic())
        say(f"{tracker.name} is back (pid {node.pid}); services reconnect by themselves")
        return True

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        if self.supervisor is not None:
            codes = self.supervisor.stop_all()
        if self.broker is not None:
            self.broker.stop()
        if self.cluster is not None:
            self.cluster.stop()
        return codes
