"""The storage port: what the runtime and the services need from a database.

SQL passed through a :class:`Transaction` uses ``?`` placeholders and portable SQL that runs on
SQLite and Postgres alike; adapters translate placeholders. Handlers never see a driver object,
so a service moves from SQLite to Postgres by changing its database URL, not its code.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

Params = Sequence[Any]
Row = tuple[Any, ...]


class Transaction(Protocol):
    """An open transaction; everything done through it commits or rolls back together."""

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; returns the number of rows it changed."""
        ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...


class Database(Protocol):
    """A service's own database."""

    dialect: str  # "sqlite" or "postgres": only DDL differs between them

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """Open a transaction: commit on normal exit, roll back on an exception."""
        ...

    def read(self) -> AbstractAsyncContextManager[Transaction]:
        """A read-only snapshot of committed data that does not wait for (or block) writers.

        For queries (gRPC reads, duplicate pre-checks, the relay's scan); writing through it
        is an error.
        """
        ...

    async def migrate(self, statements: Sequence[str]) -> None:
        """Apply the DDL statements this database has not recorded yet, each once, in order
        (see :mod:`choreo.store.migrations`)."""
        ...

    async def close(self) -> None: ...
