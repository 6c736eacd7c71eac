"""``choreo up`` owns its data folder and its children (DESIGN.md invariant 11): a second ``up``
on a folder in use is refused before it starts anything, naming the running one; ``kill -9`` of
``up`` leaves no process of its running; no broker configuration file is left behind; a later
start finds what an older crash left running, names it and stops it.

Real ``choreo up`` processes, each with its own nats-server on a free port and five services.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from choreo.broker import free_port, port_is_free
from services import system

START_TIMEOUT_S = 120.0


def free_ports() -> tuple[int, int]:
    """A gRPC base with base..base+4 free (the five services' ports), and a NATS port apart
    from them (free_port hands out ports in turn: the next one would be base+1)."""
    for _ in range(200):
        base = free_port()
        if all(port_is_free(base + offset) for offset in range(5)):
            for _ in range(10):
                nats = free_port()
                if not base <= nats < base + 5:
                    return base, nats
    raise RuntimeError("no five free ports in a row")


def start_up(data_dir: Path, *extra: str) -> subprocess.Popen[str]:
    base, nats = free_ports()
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "choreo.cli",
            "up",
            "--data-dir",
            str(data_dir),
            "--grpc-base-port",
            str(base),
            "--nats-port",
            str(nats),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("CHOREO_")},
    )


def wait_running(up: subprocess.Popen[str], data_dir: Path) -> dict[str, object]:
    """Until ``up`` has written system.json (every service healthy); its content."""
    path = data_dir / "system.json"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if up.poll() is not None:
            out, err = up.communicate()
            raise AssertionError(f"choreo up exited with {up.returncode}:\n{out}\n{err}")
        if path.exists():
            data: dict[str, object] = json.loads(path.read_text())
            if data.get("pid") == up.pid:
                return data
        time.sleep(0.2)
    raise AssertionError(f"choreo up did not write {path} in {START_TIMEOUT_S}s")


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of a running process (None if gone or a zombie): with the pid,
    it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def stop(up: subprocess.Popen[str]) -> None:
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def first_up(data_dir: Path) -> Iterator[subprocess.Popen[str]]:
    up = start_up(data_dir)
    try:
        yield up
    finally:
        stop(up)


def test_a_second_up_on_the_same_folder_is_refused_naming_the_running_one(
    first_up: subprocess.Popen[str], data_dir: Path
) -> None:
    running = wait_running(first_up, data_dir)
    order_address = dict(running["grpc"])["order"]  # type: ignore[call-overload]
    services_before = set(children_of(first_up.pid))

    started = time.monotonic()
    second = start_up(data_dir)  # other gRPC and NATS ports, same folder
    out, err = second.communicate(timeout=60)
    took = time.monotonic() - started

    assert second.returncode != 0, out
    assert f"pid {first_up.pid}" in err, err
    assert order_address in err, err  # and the ports it runs on
    assert took < 15, took  # refused at once, not after starting a broker and services
    assert not (data_dir / "logs").exists() or not any(
        "exited" in path.read_text(errors="replace") for path in (data_dir / "logs").glob("*.log")
    )
    # The running system is untouched: its file, its processes.
    assert json.loads((data_dir / "system.json").read_text())["pid"] == first_up.pid
    assert first_up.poll() is None
    assert set(children_of(first_up.pid)) == services_before

    stop(first_up)
    assert first_up.returncode == 0, first_up.communicate()
    assert not (data_dir / "system.json").exists()
    # No broker configuration is left in the folder.
    assert [p for p in data_dir.rglob("*.conf")] == []


def test_kill_9_of_up_leaves_no_process_running(
    first_up: subprocess.Popen[str], data_dir: Path
) -> None:
    wait_running(first_up, data_dir)
    children = {pid: process_start_time(pid) for pid in children_of(first_up.pid)}
    # The broker and five services (and the guardian).
    assert len(children) >= 6, children
    lock_file = data_dir / "up.lock"
    recorded = json.loads(lock_file.read_text())["children"] if lock_file.exists() else {}

    first_up.send_signal(signal.SIGKILL)
    first_up.wait()

    deadline = time.monotonic() + 20
    alive = dict(children)
    while alive and time.monotonic() < deadline:
        alive = {
            pid: started for pid, started in alive.items() if process_start_time(pid) == started
        }
        time.sleep(0.1)
    assert alive == {}, f"still running after kill -9 of up: {sorted(alive)}"
    assert {int(pid) for pid in recorded} == set(children)  # what a later start would check
    assert [p for p in data_dir.rglob("*.conf")] == []

    # The folder is free again: the kernel dropped the lock with its holder.
    again = start_up(data_dir)
    try:
        wait_running(again, data_dir)
    finally:
        stop(again)
    assert again.returncode == 0


def test_a_later_start_names_and_stops_what_an_older_crash_left_running(
    data_dir: Path,
) -> None:
    data_dir.mkdir(parents=True)
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        # What an `up` that crashed (and whose guardian died too) left in its lock file.
        (data_dir / system.LOCK_FILE).write_text(
            json.dumps(
                {"pid": 999_999, "children": {str(leftover.pid): process_start_time(leftover.pid)}}
            )
        )
        lock = system.DataFolderLock(data_dir)
        said: list[str] = []
        previous = lock.acquire()
        try:
            stopped = system.stop_leftovers(previous, said.append)
        finally:
            lock.release()

        assert stopped == [leftover.pid]
        assert leftover.wait(5) == -signal.SIGTERM
        assert str(leftover.pid) in said[0] and "999999" in said[0], said
    finally:
        leftover.kill()
        leftover.wait()


def test_a_recorded_pid_now_used_by_another_process_is_left_alone(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        started = process_start_time(other.pid)
        assert started is not None
        # Same pid, another start time: the pid was reused by an unrelated process.
        previous = {"pid": 999_999, "children": {str(other.pid): started - 1}}
        assert system.stop_leftovers(previous, print) == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
