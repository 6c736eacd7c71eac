"""The probe service as a separate process, and what tests wait for on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from choreo import subjects
from choreo.broker import EmbeddedBroker

REPO = Path(__file__).resolve().parents[2]
DURABLE = subjects.durable_name("probe", "shop.order.v1.OrderCreated")


def start_probe_process(broker: EmbeddedBroker, db: Path, **env: str) -> subprocess.Popen[bytes]:
    environ = {
        **os.environ,
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
        info = await js.consumer_info("SHOP_ORDER", DURABLE)
    except Exception:
        return False
    return bool(info.num_waiting)


async def exited(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is not None
