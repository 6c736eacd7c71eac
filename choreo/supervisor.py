"""Run services as separate processes: start, wait healthy, kill, restart, stop in order.

Used by ``choreo up``, the end-to-end tests, the benchmark and chaos runs, so they all run the
system the same way: real processes talking over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass
class ProcessSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    grpc_address: str | None = None  # checked with grpc.health.v1 when set
    log_path: Path | None = None


@dataclass
class ManagedProcess:
    spec: ProcessSpec
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    history: list[tuple[float, str]] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        log = open(self.spec.log_path or os.devnull, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            self.spec.argv,
            env={**os.environ, **self.spec.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        self.history.append((time.time(), "start"))

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, like a crash or an OOM kill."""
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait()
            self.history.append((time.time(), "kill"))

    def terminate(self, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.history.append((time.time(), "stop"))
        return self.process.returncode


async def wait_healthy(address: str, timeout: float = 30.0, service: str = "") -> None:
    """Wait until ``grpc.health.v1.Health/Check`` answers SERVING at ``address``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                response = await stub.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1.0
                )
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError as exc:
                last_error = exc
            await asyncio.sleep(0.1)
    raise TimeoutError(f"no healthy gRPC server at {address} after {timeout}s ({last_error!r})")


class Supervisor:
    """A set of processes started and stopped together."""

    def __init__(self, specs: list[ProcessSpec]) -> None:
        self.processes = {spec.name: ManagedProcess(spec) for spec in specs}

    async def start_all(self, timeout: float = 60.0) -> None:
        for managed in self.processes.values():
            managed.start()
        await asyncio.gather(*(self.wait_ready(name, timeout) for name in self.processes))

    async def wait_ready(self, name: str, timeout: float = 60.0) -> None:
        managed = self.processes[name]
        if managed.spec.grpc_address is None:
            return
        task = asyncio.create_task(wait_healthy(managed.spec.grpc_address, timeout))
        while not task.done():
            if not managed.alive():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                status = managed.process.returncode if managed.process else None
                raise RuntimeError(
                    f"service {name} exited with status {status} during start-up;"
                    f" see {managed.spec.log_path or 'its output'}"
                )
            await asyncio.sleep(0.05)
        await task

    def kill(self, name: str) -> None:
        self.processes[name].kill()

    async def restart(self, name: str, timeout: float = 60.0) -> None:
        managed = self.processes[name]
        if managed.alive():
            managed.terminate()
        managed.start()
        await self.wait_ready(name, timeout)

    def dead(self) -> list[str]:
        return [name for name, managed in self.processes.items() if not managed.alive()]

    def stop_all(self, timeout: float = 15.0) -> dict[str, int | None]:
        """SIGTERM every process at once (each drains in parallel), then wait for each; a
        process still running after ``timeout`` is killed. Returns the exit codes."""
        for managed in self.processes.values():
            if managed.alive():
                assert managed.process is not None
                managed.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for name, managed in self.processes.items():
            if managed.process is None:
                codes[name] = None
                continue
            try:
                managed.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                managed.process.kill()
                managed.process.wait()
            managed.history.append((time.time(), "stop"))
            codes[name] = managed.process.returncode
        return codes
