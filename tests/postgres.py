"""The local Postgres for tests: a fresh database per test, dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import asyncpg

POSTGRES_ADMIN_URL = os.environ.get("CHOREO_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


def url_of(database: str) -> str:
    """The admin URL with its database swapped for ``database``."""
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"


@asynccontextmanager
async def fresh_database(prefix: str = "choreo_test") -> AsyncIterator[str]:
    """Create an empty database with a unique name; yield its URL; drop it (and anything
    still connected to it) afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url_of(name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def drop_databases(urls: Iterable[str]) -> None:
    """Drop the databases of these URLs (a test system's, one per service)."""
    from services.system import drop_postgres_databases  # the reference system's tests only

    await drop_postgres_databases(urls)


def unique_base_url(prefix: str = "choreo_test") -> str:
    """A server URL naming a database prefix nobody else uses (the system appends
    ``_<service>``)."""
    return url_of(f"{prefix}_{uuid.uuid4().hex[:8]}")
