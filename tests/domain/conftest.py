"""Fixtures for the domain and store tests: the real catalog and a real SQLite database.

The runtime's adapters live in ``choreo.store``; this small one implements the same
``Transaction`` port over the standard library's ``sqlite3`` (aiosqlite left the lock), so the
store tests run against a real SQLite file without depending on runtime code.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from choreo.store.port import Params, Row
from services.catalog import Catalog, default_catalog_path, load_catalog


class SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def migrate(self, schema: Sequence[str]) -> SqliteTx:
        for statement in schema:
            self.conn.execute(statement)
        self.conn.commit()
        return self

    async def execute(self, sql: str, params: Params = ()) -> int:
        return self.conn.execute(sql, tuple(params)).rowcount

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        row = self.conn.execute(sql, tuple(params)).fetchone()
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return [tuple(r) for r in self.conn.execute(sql, tuple(params)).fetchall()]


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog(default_catalog_path())


@pytest.fixture
async def tx(tmp_path: Path) -> AsyncIterator[SqliteTx]:
    conn = sqlite3.connect(tmp_path / "service.db")
    try:
        yield SqliteTx(conn)
    finally:
        conn.close()
