"""Postgres adapter of the storage port (asyncpg), for a service that outgrows one machine.

Each transaction takes its own pooled connection, so unlike SQLite, transactions of different
aggregates run in parallel; replicas of a service can share the database. The pool is bounded
(``CHOREO_DATABASE_POOL_SIZE``) and so is the wait for a free connection
(``CHOREO_DATABASE_ACQUIRE_TIMEOUT_S``): an exhausted pool fails the unit (which is retried)
instead of hanging it forever.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from choreo.errors import ConfigurationError, TransientError
from choreo.redact import redact_url
from choreo.store.migrations import apply_versioned
from choreo.store.port import Params, Row

DIALECT = "postgres"
_PLACEHOLDER = re.compile(r"\?")
# Replicas starting together take this lock around their migrations (one applies, the others
# then find everything applied).
_MIGRATION_LOCK = 4242


def to_postgres(sql: str) -> str:
    """``?`` placeholders to ``$1, $2, ...``."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


def _rowcount(status: str) -> int:
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class PoolExhausted(TransientError):
    """No connection came free within the acquire timeout."""


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

    def __init__(self, pool: Any, acquire_timeout_s: float = 10.0) -> None:
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s

    @classmethod
    async def connect(
        cls, url: str, min_size: int = 1, max_size: int = 10, acquire_timeout_s: float = 10.0
    ) -> PostgresDatabase:
        try:
            pool = await asyncpg.create_pool(
                url, min_size=min(min_size, max_size), max_size=max_size
            )
        except (OSError, asyncpg.PostgresError) as exc:
            # The driver's message may quote the DSN; the URL is shown with its password masked.
            raise ConfigurationError(
                f"cannot connect to Postgres at {redact_url(url)}: {redact_url(str(exc))};"
                " check CHOREO_DATABASE_URL"
            ) from None
        return cls(pool, acquire_timeout_s)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        try:
            connection = await self._pool.acquire(timeout=self._acquire_timeout_s)
        except TimeoutError:
            raise PoolExhausted(
                f"no free Postgres connection within {self._acquire_timeout_s}s"
                f" (pool of {self._pool.get_max_size()}): raise CHOREO_DATABASE_POOL_SIZE or"
                " CHOREO_DATABASE_ACQUIRE_TIMEOUT_S"
            ) from None
        try:
            yield connection
        finally:
            await self._pool.release(connection)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        async with self._connection() as connection, connection.transaction():
            yield PostgresTransaction(connection)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[PostgresTransaction]:
        async with (
            self._connection() as connection,
            connection.transaction(readonly=True, isolation="repeatable_read"),
        ):
            yield PostgresTransaction(connection)

    async def migrate(self, statements: Sequence[str]) -> None:
        async with self.transaction() as tx:
            await tx.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            await apply_versioned(tx, statements)

    async def close(self, timeout_s: float = 10.0) -> None:
        # A graceful close waits for every acquired connection to come back; a handler task
        # cancelled mid-query may never return one, so after a bound the pool is terminated
        # (Postgres rolls back whatever those connections had open).
        try:
            await asyncio.wait_for(self._pool.close(), timeout_s)
        except TimeoutError:
            self._pool.terminate()
