"""The probe service as a separate process (reading the testkit contracts), and what tests
wait for on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from choreo import subjects
from choreo.broker import EmbeddedBroker
from tests import testkit

REPO = Path(__file__).resolve().parents[2]
TRIGGER = testkit.desk_events.TicketOpened.DESCRIPTOR.full_name
STREAM = subjects.stream_name(subjects.context_of(TRIGGER))
DURABLE = subjects.durable_name("probe", TRIGGER)


def start_probe_process(broker: EmbeddedBroker, db: Path, **env: str) -> subprocess.Popen[bytes]:
    environ = {
        **testkit.subprocess_env(os.environ),
        "CHOREO_NATS_URL": broker.url,
        "CHOREO_DATABASE_URL": f"sqlite:///{db}",
        "CHOREO_ACK_WAIT_S": "2",
        "CHOREO_FETCH_TIMEOUT_S": "0.2",
        "CHOREO_RELAY_SWEEP_INTERVAL_S": "0.2",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.runtime.probe"],
        cwd=REPO,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def consumer_ready(js: Any) -> bool:
    try:
        info = await js.consumer_info(STREAM, DURABLE)
    except Exception:
        return False
    return bool(info.num_waiting)


async def exited(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is not None
