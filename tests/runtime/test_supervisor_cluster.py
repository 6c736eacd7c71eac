"""`choreo up --cluster 3` supervises every broker node: one killed with SIGKILL comes back on
its own port and store, the services are not restarted, and a saga placed afterwards ships."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.runtime.test_supervisor_broker import (
    SERVICES,
    assert_an_order_ships,
    running_up,
    wait_until,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def cluster_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    data = tmp_path / "data"
    with running_up(data, "--cluster", "3", env={}, ready_s=120) as process:
        yield process, data


def children(process: subprocess.Popen[str]) -> tuple[list[psutil.Process], dict[str, int]]:
    """The live broker nodes, and each service's pid by name."""
    nodes, services = [], {}
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            cmdline = child.cmdline()
            if child.name() == "nats-server" and child.status() != psutil.STATUS_ZOMBIE:
                nodes.append(child)
            elif "serve" in cmdline:
                services[cmdline[-1]] = child.pid
        except psutil.NoSuchProcess:
            continue
    return nodes, services


def test_a_killed_cluster_node_comes_back_and_sagas_ship_without_restarting_services(
    cluster_up: tuple[subprocess.Popen[str], Path],
) -> None:
    process, data = cluster_up
    nodes, services_before = children(process)
    assert len(nodes) == 3 and set(services_before) == SERVICES
    victim = nodes[1]
    victim_args = victim.cmdline()
    victim.kill()  # SIGKILL: a crash
    victim.wait(10)

    def node_back() -> bool:
        now, _ = children(process)
        return len(now) == 3 and victim.pid not in {node.pid for node in now}

    wait_until(node_back, 60, "the killed node restarted")
    restarted = next(node for node in children(process)[0] if node.cmdline() == victim_args)
    assert restarted.pid != victim.pid  # the same command line: its port, store and routes

    assert_an_order_ships(data)
    _, services_after = children(process)
    assert services_after == services_before, "no service was restarted for a broker node"
    assert process.poll() is None
