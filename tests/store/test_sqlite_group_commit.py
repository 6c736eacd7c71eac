"""SQLite group commit: units that finish in one loop step share a COMMIT, and each still
returns only once it is durable; a failing unit rolls back alone."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from choreo.store.sqlite import SqliteDatabase


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase(tmp_path / "group.db")
    await database.migrate(
        [
            "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
            "CREATE TABLE item (name TEXT PRIMARY KEY,"
            " parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
        ]
    )
    yield database
    await database.close()


def committed_names(path: Path) -> set[str]:
    """What another connection (another process, after a crash) would see."""
    with sqlite3.connect(path) as other:
        return {name for (name,) in other.execute("SELECT name FROM item")}


async def insert(db: SqliteDatabase, name: str, parent_id: int | None = None) -> None:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO item (name, parent_id) VALUES (?, ?)", (name, parent_id))


async def test_a_unit_is_committed_when_its_transaction_returns(db: SqliteDatabase) -> None:
    await insert(db, "a")
    assert committed_names(db.path) == {"a"}


async def test_units_finishing_in_one_step_share_one_commit(db: SqliteDatabase) -> None:
    before = db.commits
    await asyncio.gather(*(insert(db, f"unit-{n}") for n in range(20)))
    assert committed_names(db.path) == {f"unit-{n}" for n in range(20)}
    assert db.commits - before == 1


async def test_a_failing_unit_rolls_back_alone(db: SqliteDatabase) -> None:
    async def failing() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO item (name) VALUES ('doomed')")
            raise RuntimeError("handler failed")

    results = await asyncio.gather(
        insert(db, "before"), failing(), insert(db, "after"), return_exceptions=True
    )
    assert [type(r) for r in results] == [type(None), RuntimeError, type(None)]
    assert committed_names(db.path) == {"before", "after"}


async def test_a_failed_commit_fails_every_unit_in_it_and_keeps_none(
    db: SqliteDatabase,
) -> None:
    # A deferred foreign key is only checked at COMMIT: the shared commit itself fails.
    results = await asyncio.gather(
        insert(db, "fine"), insert(db, "orphan", parent_id=42), return_exceptions=True
    )
    assert all(isinstance(r, sqlite3.IntegrityError) for r in results)
    assert committed_names(db.path) == set()
    await insert(db, "next")  # the connection is usable again
    assert committed_names(db.path) == {"next"}


async def test_a_failed_unit_waits_for_the_commit_and_reports_its_failure(
    db: SqliteDatabase,
) -> None:
    # The failing unit read what "orphan" wrote; that COMMIT fails, so its own verdict (which
    # might have been "duplicate" or "dead letter") must not stand: it gets the COMMIT's error.
    async def failing_after_reading() -> None:
        async with db.transaction() as tx:
            assert await tx.fetchone("SELECT 1 FROM item WHERE name = 'orphan'")
            raise RuntimeError("decided on uncommitted data")

    results = await asyncio.gather(
        insert(db, "orphan", parent_id=42), failing_after_reading(), return_exceptions=True
    )
    assert all(isinstance(r, sqlite3.IntegrityError) for r in results), results
    assert committed_names(db.path) == set()


async def test_close_commits_units_still_waiting(tmp_path: Path) -> None:
    database = SqliteDatabase(tmp_path / "close.db")
    await database.migrate(["CREATE TABLE item (name TEXT PRIMARY KEY, parent_id INTEGER)"])
    waiting = asyncio.create_task(insert(database, "last"))
    await asyncio.sleep(0)  # the unit ran; its commit is scheduled, not yet done
    assert committed_names(database.path) == set()
    await database.close()
    await waiting
    assert committed_names(database.path) == {"last"}


async def test_the_wal_stays_bounded_under_steady_writes_and_reads(tmp_path: Path) -> None:
    # A checkpoint that never catches up lets the WAL (and its index, in memory) grow with
    # every commit; SQLite's own checkpoint in COMMIT resets it at about 1000 pages (4 MB).
    database = SqliteDatabase(tmp_path / "wal.db")
    await database.migrate(["CREATE TABLE blob (id INTEGER PRIMARY KEY, data BLOB)"])
    try:
        for round_ in range(300):
            async with database.read() as tx:  # a reader between writes, as the relay does
                await tx.fetchone("SELECT COUNT(*) FROM blob")

            async def write(n: int, round_: int = round_) -> None:
                async with database.transaction() as tx:
                    await tx.execute(
                        "INSERT INTO blob VALUES (?, ?)", (round_ * 10 + n, b"x" * 4000)
                    )

            await asyncio.gather(*(write(n) for n in range(10)))
        written_mb = 3000 * 4000 / 2**20
        wal_mb = (tmp_path / "wal.db-wal").stat().st_size / 2**20
        assert written_mb > 11
        assert wal_mb < 6, f"WAL is {wal_mb:.1f} MB after {written_mb:.0f} MB written"
    finally:
        await database.close()


async def test_close_closes_the_connections_even_when_the_last_commit_fails(
    tmp_path: Path,
) -> None:
    database = SqliteDatabase(tmp_path / "close-fail.db")
    await database.migrate(
        [
            "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
            "CREATE TABLE item (name TEXT PRIMARY KEY,"
            " parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
        ]
    )
    waiting = asyncio.create_task(insert(database, "orphan", parent_id=42))
    await asyncio.sleep(0)
    await database.close()
    with pytest.raises(sqlite3.IntegrityError):
        await waiting
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        async with database.read() as tx:
            await tx.fetchone("SELECT 1")
