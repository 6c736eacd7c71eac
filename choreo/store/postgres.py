"""Postgres adapter of the storage port (asyncpg), for a service that outgrows one machine.

Each transaction takes its own pooled connection, so unlike SQLite, transactions of different
aggregates run in parallel; replicas of a service can share the database.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from choreo.store.port import Params, Row

DIALECT = "postgres"
_PLACEHOLDER = re.compile(r"\?")


def to_postgres(sql: str) -> str:
    """``?`` placeholders to ``$1, $2, ...``."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


def _rowcount(status: str) -> int:
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class PostgresTransaction:
    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def execute(self, sql: str, params: Params = ()) -> int:
        status = await self._connection.execute(to_postgres(sql), *params)
        return _rowcount(status)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        row = await self._connection.fetchrow(to_postgres(sql), *params)
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return [tuple(row) for row in await self._connection.fetch(to_postgres(sql), *params)]


class PostgresDatabase:
    dialect = DIALECT

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, url: str, min_size: int = 1, max_size: int = 10) -> PostgresDatabase:
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size)
        return cls(pool)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        async with self._pool.acquire() as connection, connection.transaction():
            yield PostgresTransaction(connection)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[PostgresTransaction]:
        async with (
            self._pool.acquire() as connection,
            connection.transaction(readonly=True, isolation="repeatable_read"),
        ):
            yield PostgresTransaction(connection)

    async def migrate(self, statements: Sequence[str]) -> None:
        # An advisory lock keeps replicas starting together from racing on DDL.
        async with self.transaction() as tx:
            await tx.execute("SELECT pg_advisory_xact_lock(4242)")
            for statement in statements:
                await tx.execute(statement)

    async def close(self) -> None:
        await self._pool.close()
