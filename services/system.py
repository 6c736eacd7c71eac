"""The whole system as processes: an embedded broker (unless a URL is given) and the five
services, each ``choreo serve NAME`` with its own database: a SQLite file under the data folder
(the default), or, with ``store="postgres"``, a database of its own on a Postgres server
(``<name>_<service>`` next to the database named in the URL, created here if missing; each
service applies its schema migrations when it starts).

``choreo up``, ``make demo``, the end-to-end tests, the benchmark and the chaos runs all start
the system through :class:`System`, so they run exactly what an operator runs.

One system per data folder, and nothing outlives it (DESIGN.md invariant 11): :class:`System`
takes an exclusive lock on ``<data dir>/up.lock`` before it starts anything and holds it for
its life, so a second system on the same folder is refused, naming the running one's pid and
ports. The lock file records every process started (pid and kernel start time); a
:class:`~choreo.supervisor.Guardian` ends them if this process dies without stopping them, and
a later start that finds recorded processes still running (from an older version, or a guardian
killed too) says so with their pids and stops them before it starts anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats

from choreo import grpc_tls, permissions, sealing
from choreo.broker import EmbeddedBroker, free_port, port_is_free
from choreo.cluster import EmbeddedCluster, seed_urls
from choreo.errors import ConfigurationError
from choreo.redact import redact_url
from choreo.supervisor import (
    Guardian,
    ProcessSpec,
    RestartPolicy,
    RestartTracker,
    Supervisor,
    process_start_time,
    running_as,
    stop_processes,
)
from services import payment_token
from services.registry import PORT_OFFSETS, SERVICE_NAMES

DEFAULT_GRPC_BASE_PORT = 50051
DEFAULT_POSTGRES_URL = "postgresql://127.0.0.1:5432/choreo"
STORES = ("sqlite", "postgres")
LOCK_FILE = "up.lock"
TLS_MODES = ("", "tls", "mtls")


def tls_mode_from_env() -> str:
    """``CHOREO_UP_TLS``: unset or "" (plaintext gRPC), "tls" (or 1/true), or "mtls"."""
    raw = os.environ.get("CHOREO_UP_TLS", "").strip().lower()
    mode = "tls" if raw in ("1", "true", "yes") else raw
    if mode not in TLS_MODES:
        raise ConfigurationError(f"CHOREO_UP_TLS={raw!r}: use tls or mtls (or leave it unset)")
    return mode


class DataFolderLock:
    """An exclusive ``flock`` on ``<data dir>/up.lock``, held while a system runs there.

    The kernel drops it when the holder exits, however it exits, so a stale lock cannot block
    a start. The file's content says who holds it (pid, addresses) and what it started."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None
        self.record: dict[str, Any] = {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> dict[str, Any]:
        """Take the lock or raise :class:`ConfigurationError` naming its holder; returns what
        the previous holder recorded (its processes, to look for leftovers)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            raise ConfigurationError(self._in_use(holder)) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        previous = self._read(fd)
        self.update(pid=os.getpid(), argv=sys.argv, children={})
        return previous

    def _in_use(self, holder: Mapping[str, Any]) -> str:
        folder = self.path.parent.resolve()
        pid = holder.get("pid", "?")
        grpc = holder.get("grpc") or {}
        where = (
            ", ".join(f"{name} {address}" for name, address in grpc.items())
            if grpc
            else "its ports are not known yet: it is starting"
        )
        nats = f"; NATS {holder['nats_url']}" if holder.get("nats_url") else ""
        return (
            f"the data folder {folder} is in use by `choreo up` pid {pid} (gRPC: {where}{nats})."
            f" One system per data folder: stop that one first (Ctrl-C there, or kill {pid}),"
            " or start this one with another --data-dir"
        )

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = b""
        while chunk := os.read(fd, 65536):
            raw += chunk
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def update(self, **fields: Any) -> None:
        if self._fd is None:
            return
        self.record.update(fields)
        data = (json.dumps(self.record, indent=2) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Say that nothing of ours runs any more, and let go of the folder."""
        if self._fd is None:
            return
        self.record = {}
        self.update(stopped_by=os.getpid())
        os.close(self._fd)
        self._fd = None


def stop_leftovers(previous: Mapping[str, Any], say: Callable[[str], None]) -> list[int]:
    """Stop the processes a previous holder of the folder recorded and that still run (it died
    without stopping them); returns their pids."""
    children = previous.get("children") or {}
    recorded: dict[int, int | None] = {}
    for pid, started in children.items():
        with contextlib.suppress(TypeError, ValueError):
            recorded[int(pid)] = int(started) if started is not None else None
    alive = {pid: started for pid, started in recorded.items() if running_as(pid, started)}
    if not alive:
        return []
    say(
        f"a previous `choreo up` (pid {previous.get('pid', '?')}) on this data folder ended"
        f" without stopping {len(alive)} of its processes: pids"
        f" {', '.join(str(pid) for pid in sorted(alive))}; stopping them before starting"
    )
    return stop_processes(alive, grace_s=10.0, say=say)


def _say_to_stderr(text: str) -> None:
    # Through logging: a JSON-lines log (CHOREO_LOG_FORMAT=json) stays JSON lines.
    logging.getLogger("choreo.up").warning("%s", text)


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
    # naive build (``-m tools.naive``).
    service_argv: tuple[str, ...] = ("-m", "choreo.cli", "serve")
    # How `supervise` restarts a dead broker node or service, and when it gives up.
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    # gRPC over TLS with a CA and certificates made in <data dir>/tls: "" (plaintext), "tls",
    # or "mtls" (every client presents a certificate of that CA). Env CHOREO_UP_TLS.
    tls: str = field(default_factory=tls_mode_from_env)


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
        self.lock = DataFolderLock(config.data_dir)
        self.guardian: Guardian | None = None
        self.say: Callable[[str], None] = _say_to_stderr
        self._grpc_ports: dict[str, int] | None = None
        # gRPC TLS: the services' server variables, and a client's (health checks, tools).
        self.tls_server_env: dict[str, str] = {}
        self.grpc_client_env: dict[str, str] = {}
        if config.tls not in TLS_MODES:
            raise ConfigurationError(f"tls {config.tls!r}: use tls or mtls")
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

    def _spare_port(self) -> int:
        """A free port for a process of this system, never one it was told to use: free_port
        only knows what is bound now, and the gRPC base range and the broker's port are bound
        later (a /metrics server once took a service's gRPC port that way)."""
        told = {self.config.nats_port} if self.config.nats_port else set()
        if self.config.grpc_base_port is not None:
            told |= {self.config.grpc_base_port + offset for offset in PORT_OFFSETS.values()}
        # free_port hands out each port once per process, so this ends within len(told) + 1.
        port = free_port(self.config.host)
        while port in told:
            port = free_port(self.config.host)
        return port

    def _ports(self) -> dict[str, int]:
        base = self.config.grpc_base_port
        if base is None:
            return {name: self._spare_port() for name in SERVICE_NAMES}
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
        if self._grpc_ports is None:
            self._grpc_ports = self._ports()
        for name, first_port in self._grpc_ports.items():
            for replica in range(self.config.replicas):
                # The first replica keeps the service's stable address (what clients use);
                # the others listen on free ports. All share the durable consumers (so they
                # compete for events) and the database (whose inbox key keeps an event from
                # being applied twice).
                port = first_port if replica == 0 else self._spare_port()
                specs.append(self._spec(name, replica_name(name, replica), port, databases, data))
        return specs

    def _spec(
        self, name: str, process: str, port: int, databases: Mapping[str, str], data: Path
    ) -> ProcessSpec:
        address = f"{self.config.host}:{port}"
        self.replica_addresses[process] = address
        if process == name:
            self.addresses[name] = address
        metrics_port = self._spare_port()
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
        env.update(self.tls_server_env)
        return ProcessSpec(
            name=process,
            argv=[sys.executable, *self.config.service_argv, name],
            env=env,
            grpc_address=address,
            log_path=data / "logs" / f"{process}.log",
            grpc_credentials=grpc_tls.client_credentials(self.grpc_client_env),
        )

    def _setting(self, name: str) -> str:
        return self.config.env.get(name) or os.environ.get(name, "")

    def _prepare_tls(self) -> None:
        """``tls``: the data folder's CA and certificates for every service. Without it, TLS
        settings given in the environment are honoured, and health checks must speak it."""
        self.tls_server_env, self.grpc_client_env = {}, {}
        if self.config.tls:
            mutual = self.config.tls == "mtls"
            hosts = () if self.config.host in ("127.0.0.1", "localhost") else (self.config.host,)
            pki = grpc_tls.ensure_local_pki(self.config.data_dir, hosts)
            self.tls_server_env = pki.server_environ(mutual)
            self.grpc_client_env = pki.client_environ(mutual)
            return
        if not self._setting("CHOREO_GRPC_TLS_CERT_FILE"):
            return
        self.grpc_client_env = {
            name: self._setting(name) for name in grpc_tls.CLIENT_VARIABLES if self._setting(name)
        }
        if "CHOREO_GRPC_TLS_CA_FILE" not in self.grpc_client_env:
            raise ConfigurationError(
                "CHOREO_GRPC_TLS_CERT_FILE is set, so the services serve gRPC over TLS: set"
                " CHOREO_GRPC_TLS_CA_FILE to the CA that signed it (with"
                " CHOREO_GRPC_TLS_CLIENT_CERT_FILE / _KEY_FILE if CHOREO_GRPC_TLS_CLIENT_CA_FILE"
                " asks for client certificates) so health checks and the command line can"
                " verify it; or use `choreo up --tls`, which makes all of it"
            )
        if self._setting("CHOREO_GRPC_TLS_CLIENT_CA_FILE") and not self._setting(
            "CHOREO_GRPC_TLS_CLIENT_CERT_FILE"
        ):
            raise ConfigurationError(
                "CHOREO_GRPC_TLS_CLIENT_CA_FILE asks every client for a certificate: set"
                " CHOREO_GRPC_TLS_CLIENT_CERT_FILE and CHOREO_GRPC_TLS_CLIENT_KEY_FILE too, for"
                " the health checks and the command line"
            )
        grpc_tls.client_credentials(self.grpc_client_env)  # unreadable files: say so now

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
        # Before anything is started: one system per data folder (invariant 11).
        previous = self.lock.acquire()
        try:
            await self._start(previous)
        except BaseException:
            self.stop()
            raise

    async def _start(self, previous: Mapping[str, Any]) -> None:
        stop_leftovers(previous, self.say)
        self.guardian = Guardian()
        self.guardian.start()
        self._record_children()
        if not (
            self._configured(payment_token.PUBLIC_KEY_SETTING)
            and self._configured(payment_token.PRIVATE_KEY_SETTING)
        ):
            # No key files configured: the data folder's pair, created once (mode 0600).
            sealing.ensure_keypair(*payment_token.default_key_files(self.config.data_dir.resolve()))
        (self.config.data_dir / "logs").mkdir(exist_ok=True)
        self._prepare_tls()
        grpc_tls.remove_system_tls(self.config.data_dir)
        if self.config.store == "postgres":
            await create_postgres_databases(self.database_urls)
        # Taken gRPC ports are found before the broker starts on the store.
        self._grpc_ports = self._ports()
        self.lock.update(
            grpc={name: f"{self.config.host}:{p}" for name, p in self._grpc_ports.items()}
        )
        if not self.config.nats_url:
            await self._start_broker_watched()
        self.lock.update(nats_url=redact_url(self.nats_url))
        self.supervisor = Supervisor(
            self.specs(), self.config.restart_policy, on_start=self._started
        )
        self.lock.update(grpc=dict(self.replica_addresses))
        await self.supervisor.start_all()
        self._record_children()
        if self.grpc_client_env:
            grpc_tls.write_system_tls(self.config.data_dir, self.grpc_client_env)

    async def _start_broker_watched(self) -> None:
        """Start the broker (nodes) while watching for their pids: a node is in the guardian's
        care from its first moments, not only once it answers (up to seconds later)."""
        done = threading.Event()
        failed: list[BaseException] = []

        def start() -> None:
            try:
                self._start_broker()
            except BaseException as exc:  # raised below, in the caller
                failed.append(exc)
            finally:
                done.set()

        threading.Thread(target=start, name="broker-start", daemon=True).start()
        try:
            while not done.is_set():
                self._record_children()
                await asyncio.sleep(0.02)
        finally:
            # Cancelled (Ctrl-C): the start goes on in its thread; wait for it, so that the
            # stop that follows finds every node it started.
            done.wait()
            self._record_children()
        if failed:
            raise failed[0]

    def _started(self, pid: int | None) -> None:
        """A process was started: the guardian watches it, and the lock file records it."""
        if self.guardian is not None:
            self.guardian.watch(pid)
        self._record_children()

    def child_pids(self) -> list[int]:
        """Every process of ours that runs now: broker nodes, services, the guardian."""
        pids = [node.pid for node in self.broker_nodes if node.running]
        if self.supervisor is not None:
            pids += [m.pid for m in self.supervisor.processes.values() if m.alive()]
        if self.guardian is not None:
            pids.append(self.guardian.pid)
        return [pid for pid in pids if pid is not None]

    def _record_children(self) -> None:
        if self.guardian is not None:
            for node in self.broker_nodes:
                if node.running and str(node.pid) not in self.lock.record.get("children", {}):
                    self.guardian.watch(node.pid)
        children = {str(pid): process_start_time(pid) for pid in self.child_pids()}
        if children != self.lock.record.get("children"):
            self.lock.update(children=children)

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
            self._record_children()
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
        self._record_children()  # the guardian watches the new process too
        say(f"{tracker.name} is back (pid {node.pid}); services reconnect by themselves")
        return True

    def stop(self) -> dict[str, int | None]:
        """Stop every process started, then let go of the data folder (twice is harmless)."""
        codes: dict[str, int | None] = {}
        if self.supervisor is not None:
            codes = self.supervisor.stop_all()
        if self.broker is not None:
            self.broker.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self.guardian is not None:
            self.guardian.close()
            self.guardian = None
        if self.lock.held:
            grpc_tls.remove_system_tls(self.config.data_dir)
            self.lock.release()
        return codes
