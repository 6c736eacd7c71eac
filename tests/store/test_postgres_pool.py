"""The Postgres pool is bounded, and so is the wait for a connection: an exhausted pool fails
the unit with a retryable error that names the settings, instead of hanging it."""

from __future__ import annotations

import time

import pytest

from choreo.errors import ConfigurationError, TransientError
from choreo.settings import RuntimeSettings
from choreo.store import open_database
from tests.testkit import fresh_database


def test_pool_settings_come_from_the_environment() -> None:
    settings = RuntimeSettings.from_env(
        {"CHOREO_DATABASE_POOL_SIZE": "3", "CHOREO_DATABASE_ACQUIRE_TIMEOUT_S": "2.5"}
    )
    assert (settings.database_pool_size, settings.database_acquire_timeout_s) == (3, 2.5)


async def test_an_exhausted_pool_fails_after_the_acquire_timeout() -> None:
    async with fresh_database() as url:
        db = await open_database(url, pool_size=1, acquire_timeout_s=0.3)
        try:
            async with db.transaction() as held:
                await held.execute("SELECT 1")
                started = time.monotonic()
                with pytest.raises(TransientError, match="CHOREO_DATABASE_POOL_SIZE"):
                    async with db.transaction() as tx:
                        await tx.execute("SELECT 1")
                assert 0.25 <= time.monotonic() - started < 3
            async with db.transaction() as tx:  # the connection came back: usable again
                assert await tx.fetchone("SELECT 1") == (1,)
        finally:
            await db.close()


async def test_a_pool_of_zero_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="CHOREO_DATABASE_POOL_SIZE"):
        await open_database("postgresql://127.0.0.1:5432/test", pool_size=0)
