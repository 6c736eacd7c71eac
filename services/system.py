"""The whole system as processes: an embedded broker (unless a URL is given) and the five
services, each ``choreo serve NAME`` with its own SQLite file under the data folder.

``choreo up``, ``make demo``, the end-to-end tests, the benchmark and the chaos runs all start
the system through :class:`System`, so they run exactly what an operator runs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from choreo.broker import EmbeddedBroker, free_port, port_is_free
from choreo.errors import ConfigurationError
from choreo.supervisor import ProcessSpec, Supervisor
from services.registry import PORT_OFFSETS, SERVICE_NAMES

DEFAULT_GRPC_BASE_PORT = 50051


@dataclass
class SystemConfig:
    data_dir: Path
    nats_url: str | None = None  # None: start an embedded broker
    nats_port: int = 0
    grpc_base_port: int | None = DEFAULT_GRPC_BASE_PORT  # None: free ports
    host: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)  # extra CHOREO_* for every service
    sync_always: bool = False


class System:
    def __init__(self, config: SystemConfig) -> None:
        self.config = config
        self.broker: EmbeddedBroker | None = None
        self.supervisor: Supervisor | None = None
        self.addresses: dict[str, str] = {}

    @property
    def nats_url(self) -> str:
        if self.config.nats_url:
            return self.config.nats_url
        assert self.broker is not None, "the system is not started"
        return self.broker.url

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
        specs = []
        for name, port in self._ports().items():
            address = f"{self.config.host}:{port}"
            self.addresses[name] = address
            env = {
                "CHOREO_NATS_URL": self.nats_url,
                "CHOREO_DATABASE_URL": f"sqlite:///{data / (name + '.db')}",
                "CHOREO_DATA_DIR": str(data),
                "CHOREO_GRPC_HOST": self.config.host,
                "CHOREO_GRPC_PORT": str(port),
                **self.config.env,
            }
            specs.append(
                ProcessSpec(
                    name=name,
                    argv=[sys.executable, "-m", "choreo.cli", "serve", name],
                    env=env,
                    grpc_address=address,
                    log_path=data / "logs" / f"{name}.log",
                )
            )
        return specs

    async def start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        (self.config.data_dir / "logs").mkdir(exist_ok=True)
        if not self.config.nats_url:
            self.broker = EmbeddedBroker(
                store_dir=self.config.data_dir / "jetstream",
                port=self.config.nats_port,
                sync_always=self.config.sync_always,
                log_file=self.config.data_dir / "logs" / "nats-server.log",
            )
            self.broker.start()
        try:
            # Building the specs checks the gRPC ports: a taken one must not leave the broker.
            self.supervisor = Supervisor(self.specs())
            await self.supervisor.start_all()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        if self.supervisor is not None:
            codes = self.supervisor.stop_all()
        if self.broker is not None:
            self.broker.stop()
        return codes
