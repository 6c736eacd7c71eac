"""Storage port and its adapters (SQLite by default, Postgres for scale-out)."""

from __future__ import annotations

from choreo.errors import ConfigurationError
from choreo.extras import require
from choreo.redact import redact_url
from choreo.store.port import Database


async def open_database(
    url: str, *, pool_size: int = 10, acquire_timeout_s: float = 10.0
) -> Database:
    """Open a database by URL: ``sqlite:///path/file.db`` or ``postgresql://...``.

    The pool settings apply to Postgres only; SQLite serves a process with one connection.
    """
    if url.startswith("sqlite:"):
        from choreo.store.sqlite import SqliteDatabase

        return SqliteDatabase.from_url(url)
    if url.startswith(("postgresql:", "postgres:")):
        if pool_size < 1:
            raise ConfigurationError(f"CHOREO_DATABASE_POOL_SIZE={pool_size}: must be >= 1")
        if acquire_timeout_s <= 0:
            raise ConfigurationError(
                f"CHOREO_DATABASE_ACQUIRE_TIMEOUT_S={acquire_timeout_s}: must be > 0 seconds"
            )
        require("asyncpg", "postgres")
        from choreo.store.postgres import PostgresDatabase

        return await PostgresDatabase.connect(
            url, max_size=pool_size, acquire_timeout_s=acquire_timeout_s
        )
    raise ValueError(
        f"database URL {redact_url(url)!r} not understood: use sqlite:///path/file.db or postgresql://..."
    )
