"""Storage port and its adapters (SQLite by default, Postgres for scale-out)."""

from __future__ import annotations

from choreo.store.port import Database


async def open_database(url: str) -> Database:
    """Open a database by URL: ``sqlite:///path/file.db`` or ``postgresql://...``."""
    if url.startswith("sqlite:"):
        from choreo.store.sqlite import SqliteDatabase

        return SqliteDatabase.from_url(url)
    if url.startswith(("postgresql:", "postgres:")):
        from choreo.store.postgres import PostgresDatabase

        return await PostgresDatabase.connect(url)
    raise ValueError(
        f"database URL {url!r} not understood: use sqlite:///path/file.db or postgresql://..."
    )
