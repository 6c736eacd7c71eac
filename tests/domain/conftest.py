"""Fixtures for the domain and store tests: the real catalog and a real SQLite database.

The runtime's adapters live in ``choreo.store``; this small one implements the same
``Transaction`` port over aiosqlite, so the store tests run against a real SQLite file
without depending on runtime code that is being written at the same time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiosqlite
import pytest

from choreo.store.port import Params, Row
from services.catalog import Catalog, default_catalog_path, load_catalog


class SqliteTx:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def migrate(self, schema: Sequence[str]) -> SqliteTx:
        for statement in schema:
            await self.conn.execute(statement)
        await self.conn.commit()
        return self

    async def execute(self, sql: str, params: Params = ()) -> int:
        cursor = await self.conn.execute(sql, tuple(params))
        return cursor.rowcount

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        cursor = await self.conn.execute(sql, tuple(params))
        row = await cursor.fetchone()
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        cursor = await self.conn.execute(sql, tuple(params))
        return [tuple(r) for r in await cursor.fetchall()]


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog(default_catalog_path())


@pytest.fixture
async def tx(tmp_path: Path) -> AsyncIterator[SqliteTx]:
    conn = await aiosqlite.connect(tmp_path / "service.db")
    try:
        yield SqliteTx(conn)
    finally:
        await conn.close()
