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


# Every test states its tier by where it lives, so `pytest -m unit` runs the fast, I/O-free
# ones in under a minute and `make test` still runs everything.
TIERS = {
    "domain": "unit",
    "properties": "unit",
    "contracts": "unit",
    "e2e": "e2e",
    "chaos": "chaos",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_root = Path(__file__).parent
    tiers = set(TIERS.values()) | {"integration"}
    for item in items:
        if any(item.get_closest_marker(tier) for tier in tiers):
            continue  # the module said its own tier (a contracts test that runs buf, say)
        folder = item.path.relative_to(tests_root).parts[0]
        item.add_marker(getattr(pytest.mark, TIERS.get(folder, "integration")))
