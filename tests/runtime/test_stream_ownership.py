"""Stream settings have one owner: a service grows its own stream, never shrinks it, and never
touches another context's stream or the dead-letter stream beyond creating them."""

from __future__ import annotations

from typing import Any

import pytest

from choreo.settings import RuntimeSettings
from choreo.streams import StreamConflict, ensure_streams
from tests import testkit

# The testkit's contexts (tests/testkit): desk, stock and ledger, each owning its stream.
pytestmark = pytest.mark.usefixtures("testkit_contracts")

DAY = 24 * 3600.0


async def limits(js: Any, stream: str) -> tuple[float, float, int]:
    config = (await js.stream_info(stream)).config
    return config.max_age, config.duplicate_window, config.num_replicas


async def test_a_service_creates_every_stream_it_needs_when_absent(js: Any) -> None:
    await ensure_streams(js, RuntimeSettings(service="ledger", max_age_s=2 * DAY))
    names = {info.config.name for info in await js.streams_info()}
    assert names == {*testkit.STREAMS, "CHOREO_DLQ"}
    assert testkit.STREAMS == ("TESTKIT_DESK", "TESTKIT_STOCK", "TESTKIT_LEDGER")


async def test_another_service_never_changes_a_stream_it_does_not_own(js: Any) -> None:
    await ensure_streams(js, RuntimeSettings(service="desk", max_age_s=7 * DAY))
    dlq_before = await limits(js, "CHOREO_DLQ")
    # Stock starts later with a much shorter retention: the desk stream keeps its own.
    await ensure_streams(
        js, RuntimeSettings(service="stock", max_age_s=3600.0, duplicate_window_s=60.0)
    )
    assert await limits(js, "TESTKIT_DESK") == (7 * DAY, 120.0, 1)
    assert await limits(js, "CHOREO_DLQ") == dlq_before


async def test_the_owner_sets_its_stream_created_by_another_service_first(js: Any) -> None:
    # Desk starts first and creates the ledger stream as a placeholder with its own (long)
    # settings; ledger, the owner, starting later with a shorter retention sets it: no
    # message can be lost, only ledger publishes there.
    await ensure_streams(js, RuntimeSettings(service="desk", max_age_s=7 * DAY))
    await ensure_streams(js, RuntimeSettings(service="ledger", max_age_s=DAY))
    assert await limits(js, "TESTKIT_LEDGER") == (DAY, 120.0, 1)
    # From then on it is owned: a later start of desk leaves it alone, and ledger itself
    # may not shrink it any more.
    await ensure_streams(js, RuntimeSettings(service="desk", max_age_s=7 * DAY))
    assert await limits(js, "TESTKIT_LEDGER") == (DAY, 120.0, 1)
    with pytest.raises(StreamConflict, match="TESTKIT_LEDGER"):
        await ensure_streams(js, RuntimeSettings(service="ledger", max_age_s=3600.0))


async def test_the_owner_shrinking_its_stream_fails_loudly_and_changes_nothing(js: Any) -> None:
    await ensure_streams(js, RuntimeSettings(service="desk", max_age_s=7 * DAY))
    with pytest.raises(StreamConflict) as failure:
        await ensure_streams(js, RuntimeSettings(service="desk", max_age_s=3600.0))
    message = str(failure.value)
    for part in ("TESTKIT_DESK", "max_age", "604800", "3600", "CHOREO_MAX_AGE_S"):
        assert part in message, message
    assert await limits(js, "TESTKIT_DESK") == (7 * DAY, 120.0, 1)


async def test_a_smaller_duplicate_window_is_a_conflict_too(js: Any) -> None:
    await ensure_streams(js, RuntimeSettings(service="stock", duplicate_window_s=120.0))
    with pytest.raises(StreamConflict, match="duplicate_window would shrink from 120 to 5"):
        await ensure_streams(js, RuntimeSettings(service="stock", duplicate_window_s=5.0))


async def test_the_owner_may_grow_its_stream(js: Any) -> None:
    await ensure_streams(js, RuntimeSettings(service="desk", max_age_s=DAY))
    await ensure_streams(
        js, RuntimeSettings(service="desk", max_age_s=3 * DAY, duplicate_window_s=300.0)
    )
    assert await limits(js, "TESTKIT_DESK") == (3 * DAY, 300.0, 1)
    # The same settings again: nothing to do, no error.
    await ensure_streams(
        js, RuntimeSettings(service="desk", max_age_s=3 * DAY, duplicate_window_s=300.0)
    )
