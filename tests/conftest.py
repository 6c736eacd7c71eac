"""Fixtures shared by every integration test: a real nats-server -js on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from choreo.broker import EmbeddedBroker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    server = EmbeddedBroker(store_dir=tmp_path / "jetstream", log_file=tmp_path / "nats.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def nc(broker: EmbeddedBroker) -> AsyncIterator[Any]:
    client = await nats.connect(broker.url)
    yield client
    await client.close()


@pytest.fixture
async def js(nc: Any) -> Any:
    return nc.jetstream()
