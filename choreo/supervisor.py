"""Run services as separate processes: start, wait healthy, kill, restart, stop in order.

Used by ``choreo up``, the end-to-end tests, the benchmark and chaos runs, so they all run the
system the same way: real processes talking over real sockets.

Restarts follow a :class:`RestartPolicy`: a failed restart is tried again after a delay that
doubles each time, and a process is given up on (:class:`GaveUp`) after too many failed
restarts in a row, or when it keeps dying soon after each successful one (a crash loop).
Giving up is the supervisor's way to say "a human must look": ``choreo up`` then stops every
process it started rather than run half a system.

Nothing outlives its supervisor (DESIGN.md invariant 11), however the supervisor ends:

- every service process asks the kernel for ``SIGTERM`` when its parent dies
  (``PR_SET_PDEATHSIG``, set by a small launcher that then execs the service, same pid);
- a :class:`Guardian` process holds the read end of a pipe from the supervisor and is told the
  pid of every process started (services, and broker nodes, whose start this module does not
  own). When the pipe reaches end of file (the supervisor exited, cleanly or by ``kill -9``),
  it sends ``SIGTERM`` to every pid still running as the same process (its start time is
  checked, so a reused pid is never hit), and ``SIGKILL`` to those still there after a grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
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
    # How the health check reaches grpc_address: None for plaintext, else TLS credentials.
    grpc_credentials: grpc.ChannelCredentials | None = None


# Run first in each service process, before the service itself replaces it (exec: same pid):
# ask the kernel for SIGTERM when the parent dies, then check the parent did not die already.
# A launcher rather than a preexec_fn: that would make subprocess fork() instead of vfork(),
# and gRPC's fork handlers in this process then write to our stderr (and may block).
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(143)  # the parent died before prctl: nobody would ever signal us\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def die_with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that it gets ``SIGTERM`` when this process dies (PR_SET_PDEATHSIG).

    The kernel sends it when the *thread* that started the child ends, so processes meant to
    outlive a short-lived thread must not be started from one (the supervisor starts services
    from the event loop's thread)."""
    executable = shutil.which(argv[0]) or argv[0]
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), executable, *argv[1:]]


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it is not running
    (or is a zombie). With the pid it names one process: pids are reused, start times not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def running_as(pid: int, start_time: int | None) -> bool:
    """Is ``pid`` still the process that started at ``start_time``?"""
    now = process_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def stop_processes(
    pids: dict[int, int | None], grace_s: float = 10.0, say: Callable[[str], None] | None = None
) -> list[int]:
    """SIGTERM every pid still running as the recorded process, SIGKILL what is left after
    ``grace_s``; returns the pids that were running."""
    running = [pid for pid, started in pids.items() if running_as(pid, started)]
    for pid in running:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(running_as(p, pids[p]) for p in running):
        time.sleep(0.05)
    for pid in running:
        if running_as(pid, pids[pid]):
            if say is not None:
                say(f"pid {pid} still running {grace_s:.0f}s after SIGTERM: SIGKILL")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return running


class Guardian:
    """A watcher process that ends every process it was told about once its pipe from us
    closes: when we exit, by any means (see the module's docstring)."""

    def __init__(self, grace_s: float = 10.0) -> None:
        self.grace_s = grace_s
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "choreo.supervisor", "guard", str(self.grace_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C goes to `up`, which stops things in order
        )

    def watch(self, pid: int | None) -> None:
        """Have ``pid`` ended when we end (its start time is read now)."""
        if pid is None or self._process is None or self._process.stdin is None:
            return
        started = process_start_time(pid)
        if started is None:
            return
        with self._lock, contextlib.suppress(BrokenPipeError, ValueError):
            self._process.stdin.write(f"{pid} {started}\n".encode())
            self._process.stdin.flush()

    def close(self, timeout: float = 5.0) -> None:
        """End the watch: the guardian stops what is still running of ours, then exits."""
        if self._process is None:
            return
        if self._process.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ValueError):
                self._process.stdin.close()
        try:
            self._process.wait(timeout + self.grace_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _guard(grace_s: float) -> None:
    """The guardian's body: collect pids from stdin until end of file, then stop them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pids: dict[int, int | None] = {}
    for line in sys.stdin.buffer:
        pid, _, started = line.decode().strip().partition(" ")
        if pid.isdigit():
            pids[int(pid)] = int(started) if started.isdigit() else None
    stopped = stop_processes(pids, grace_s)
    if stopped:
        print(f"choreo guardian: stopped {len(stopped)} orphaned processes: {stopped}", flush=True)


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
            # Dies with us, however we die (invariant 11); the Guardian is the second line.
            die_with_parent(self.spec.argv),
            env={**os.environ, **self.spec.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        self.history.append((time.time(), "start"))

    def exit_summary(self, lines: int = 12) -> str:
        """How the process ended and the last lines of its log: what an operator (or a failed
        test) needs to see about a death nobody planned."""
        code = self.process.returncode if self.process else None
        summary = f"exit code {code}"
        if self.spec.log_path is None or not self.spec.log_path.exists():
            return summary
        with open(self.spec.log_path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 8192))
            tail = log.read().decode(errors="replace").splitlines()[-lines:]
        return summary + "; last log lines:\n" + "\n".join(tail)

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


@dataclass(frozen=True)
class RestartPolicy:
    """How hard to try before giving up on a process (env ``CHOREO_RESTART_*``)."""

    attempts: int = 5  # failed restarts in a row before giving up
    backoff_s: float = 0.5  # delay after the first failed restart; doubles each time
    max_backoff_s: float = 15.0
    crash_loop: int = 5  # more successful restarts than this within window_s: a crash loop
    window_s: float = 120.0
    ready_timeout_s: float = 60.0  # a restarted service must answer SERVING within this

    @classmethod
    def from_env(cls) -> RestartPolicy:
        def number(name: str, default: float) -> float:
            raw = os.environ.get(name, "")
            try:
                return float(raw) if raw else default
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None

        base = cls()
        return cls(
            attempts=int(number("CHOREO_RESTART_ATTEMPTS", base.attempts)),
            backoff_s=number("CHOREO_RESTART_BACKOFF_S", base.backoff_s),
            max_backoff_s=number("CHOREO_RESTART_MAX_BACKOFF_S", base.max_backoff_s),
            crash_loop=int(number("CHOREO_RESTART_CRASH_LOOP", base.crash_loop)),
            window_s=number("CHOREO_RESTART_WINDOW_S", base.window_s),
            ready_timeout_s=number("CHOREO_RESTART_READY_TIMEOUT_S", base.ready_timeout_s),
        )


class GaveUp(Exception):
    """A process could not be kept running; whoever supervises must stop everything."""


@dataclass
class RestartTracker:
    """One process's restart record under a policy: when the next try is due, when to give up."""

    name: str
    policy: RestartPolicy
    failures: int = 0  # failed restarts in a row
    next_try_at: float = 0.0  # monotonic
    restarts: deque[float] = field(default_factory=deque)  # successful ones, monotonic
    last_error: str = ""

    def due(self, now: float) -> bool:
        return now >= self.next_try_at

    def succeeded(self, now: float) -> None:
        self.failures = 0
        self.next_try_at = 0.0
        self.restarts.append(now)
        while self.restarts and self.restarts[0] < now - self.policy.window_s:
            self.restarts.popleft()
        if len(self.restarts) > self.policy.crash_loop:
            raise GaveUp(
                f"{self.name} died {len(self.restarts)} times within"
                f" {self.policy.window_s:.0f}s after being restarted (a crash loop)"
            )

    def failed(self, now: float, error: BaseException) -> float:
        """Record a failed restart; returns the delay before the next try, or raises GaveUp."""
        self.failures += 1
        self.last_error = str(error) or type(error).__name__
        if self.failures >= self.policy.attempts:
            raise GaveUp(
                f"{self.name} could not be restarted ({self.failures} attempts in a row);"
                f" last error: {self.last_error}"
            )
        delay = min(self.policy.max_backoff_s, self.policy.backoff_s * 2 ** (self.failures - 1))
        self.next_try_at = now + delay
        return delay


def health_channel(
    address: str, credentials: grpc.ChannelCredentials | None = None
) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(address)
    return grpc.aio.secure_channel(address, credentials)


async def wait_healthy(
    address: str,
    timeout: float = 30.0,
    service: str = "",
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Wait until ``grpc.health.v1.Health/Check`` answers SERVING at ``address`` (over TLS
    with ``credentials``)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    async with health_channel(address, credentials) as channel:
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

    def __init__(
        self,
        specs: list[ProcessSpec],
        policy: RestartPolicy | None = None,
        on_start: Callable[[int | None], None] | None = None,
    ) -> None:
        self.processes = {spec.name: ManagedProcess(spec) for spec in specs}
        self.policy = policy or RestartPolicy()
        self.trackers = {spec.name: RestartTracker(spec.name, self.policy) for spec in specs}
        # Told the pid of every process started (the Guardian's watch).
        self.on_start = on_start

    def _start(self, managed: ManagedProcess) -> None:
        managed.start()
        if self.on_start is not None:
            self.on_start(managed.pid)

    async def start_all(self, timeout: float = 60.0) -> None:
        for managed in self.processes.values():
            self._start(managed)
        await asyncio.gather(*(self.wait_ready(name, timeout) for name in self.processes))

    async def wait_ready(self, name: str, timeout: float = 60.0) -> None:
        managed = self.processes[name]
        if managed.spec.grpc_address is None:
            return
        task = asyncio.create_task(
            wait_healthy(
                managed.spec.grpc_address, timeout, credentials=managed.spec.grpc_credentials
            )
        )
        try:
            while not task.done():
                if not managed.alive():
                    status = managed.process.returncode if managed.process else None
                    raise RuntimeError(
                        f"service {name} exited with status {status} during start-up;"
                        f" see {managed.spec.log_path or 'its output'}"
                    )
                await asyncio.sleep(0.05)
            await task
        finally:
            # Exited, or this wait was cancelled (Ctrl-C): stop polling its health.
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def kill(self, name: str) -> None:
        self.processes[name].kill()

    async def restart(self, name: str, timeout: float = 60.0) -> None:
        managed = self.processes[name]
        if managed.alive():
            managed.terminate()
        self._start(managed)
        await self.wait_ready(name, timeout)

    def dead(self) -> list[str]:
        return [name for name, managed in self.processes.items() if not managed.alive()]

    async def restart_dead(self, say: Callable[[str], None] = print) -> list[str]:
        """Restart every dead process whose backoff delay has passed; returns those restarted.

        A restart that fails (the process exits during start-up, or is not healthy in time)
        is tried again later with a longer delay; :class:`GaveUp` when the policy says stop.
        """
        restarted = []
        for name in self.dead():
            tracker = self.trackers[name]
            if not tracker.due(time.monotonic()):
                continue
            managed = self.processes[name]
            code = managed.process.returncode if managed.process else None
            say(f"{name} exited (status {code}); restarting")
            try:
                await self.restart(name, self.policy.ready_timeout_s)
            except (RuntimeError, TimeoutError, OSError) as exc:
                managed.kill()  # not healthy in time: do not leave it half-started
                delay = tracker.failed(time.monotonic(), exc)
                say(f"{name} restart failed ({exc}); next try in {delay:.1f}s")
                continue
            tracker.succeeded(time.monotonic())
            restarted.append(name)
            say(f"{name} is back (pid {managed.pid})")
        return restarted

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


if __name__ == "__main__" and sys.argv[1:2] == ["guard"]:
    _guard(float(sys.argv[2]) if len(sys.argv) > 2 else 10.0)
