"""Versioned schema on both stores: every statement runs once per database, in order; a
statement appended later (even a non-idempotent ALTER) runs once on the next start; replicas
migrating together on Postgres do not trip over each other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from choreo.store import open_database
from choreo.store.schema import runtime_schema
from tests.postgres import fresh_database

V1 = ["CREATE TABLE IF NOT EXISTS widgets (id TEXT PRIMARY KEY)"]
# Not idempotent: a second run fails (the column exists), so running it once is the point.
V2 = [*V1, "ALTER TABLE widgets ADD COLUMN colour TEXT"]


@pytest.fixture(params=["sqlite", "postgres"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'service.db'}"
    else:
        async with fresh_database() as database_url:
            yield database_url


async def applied(url: str) -> int:
    db = await open_database(url)
    try:
        async with db.read() as tx:
            row = await tx.fetchone("SELECT COUNT(*) FROM choreo_schema_migrations")
        assert row is not None
        return int(row[0])
    finally:
        await db.close()


async def test_each_statement_runs_once_and_an_appended_one_runs_on_the_next_start(
    url: str,
) -> None:
    for statements in (V1, V1, V2, V2):  # four starts: two releases, each started twice
        db = await open_database(url)
        try:
            await db.migrate(statements)
        finally:
            await db.close()
    assert await applied(url) == 2
    db = await open_database(url)
    try:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO widgets (id, colour) VALUES (?, ?)", ("w", "red"))
    finally:
        await db.close()


async def test_reindenting_a_statement_does_not_run_it_again(url: str) -> None:
    db = await open_database(url)
    try:
        await db.migrate(V2)
        await db.migrate(
            [
                "CREATE TABLE IF NOT EXISTS widgets (id TEXT PRIMARY KEY)",
                " ALTER TABLE widgets\n    ADD COLUMN colour TEXT",
            ]
        )
    finally:
        await db.close()
    assert await applied(url) == 2


async def test_replicas_starting_together_on_postgres_migrate_once() -> None:
    async with fresh_database() as url:
        replicas = [await open_database(url) for _ in range(4)]
        try:
            schema = [*runtime_schema("postgres"), *V2]
            await asyncio.gather(*(db.migrate(schema) for db in replicas))
        finally:
            for db in replicas:
                await db.close()
        assert await applied(url) == len(schema)


def test_sqlite_urls_name_relative_and_absolute_files() -> None:
    from choreo.store.sqlite import path_of

    assert str(path_of("sqlite:////var/lib/choreo/order.db")) == "/var/lib/choreo/order.db"
    assert str(path_of("sqlite:///data/order.db?synchronous=FULL")) == "data/order.db"
