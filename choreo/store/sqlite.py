"""SQLite adapter of the storage port: one file per service, WAL journal.

Why synchronous sqlite3 on the event loop: a local SQLite statement takes microseconds, far
less than a thread hop (what aiosqlite pays on every call). One connection serves the whole
service, so transactions are serialised by an asyncio lock; handlers must not do slow I/O while
holding a transaction (call external providers before touching ``ctx.tx``).

``synchronous=NORMAL`` in WAL mode survives a process crash (SIGKILL) without losing a commit;
only a power loss can drop the last transactions. Set ``?synchronous=FULL`` in the URL for that.

Checkpoints (copying the WAL back into the database file, with an fsync) run in a thread of
their own instead of inside whichever ``COMMIT`` crosses SQLite's 1000-page mark: that commit
would otherwise stall the event loop for milliseconds, and every handler with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from choreo.store.port import Params, Row

DIALECT = "sqlite"


class SqliteTransaction:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    async def execute(self, sql: str, params: Params = ()) -> int:
        return self._connection.execute(sql, tuple(params)).rowcount

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        row = self._connection.execute(sql, tuple(params)).fetchone()
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return [tuple(row) for row in self._connection.execute(sql, tuple(params)).fetchall()]


class SqliteDatabase:
    """A service's SQLite file."""

    dialect = DIALECT

    def __init__(self, path: Path, synchronous: str = "NORMAL") -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute(f"PRAGMA synchronous={synchronous}")
        self._connection.execute("PRAGMA busy_timeout=5000")
        self._connection.execute("PRAGMA foreign_keys=ON")
        self._connection.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer does it
        self._lock = asyncio.Lock()
        # WAL lets a second connection read the last committed state while the first writes.
        self._reader = sqlite3.connect(
            f"file:{path.resolve()}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        self._reader.execute("PRAGMA busy_timeout=5000")
        self._read_lock = asyncio.Lock()
        self._checkpointer = WalCheckpointer(path)

    @classmethod
    def from_url(cls, url: str) -> SqliteDatabase:
        parsed = urlparse(url)
        path = parsed.netloc + parsed.path if parsed.netloc else parsed.path
        if (
            path.startswith("/")
            and url.startswith("sqlite:///")
            and not url.startswith("sqlite:////")
        ):
            path = path[1:]  # sqlite:///relative/file.db, sqlite:////absolute/file.db
        synchronous = parse_qs(parsed.query).get("synchronous", ["NORMAL"])[0].upper()
        if synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous={synchronous} in {url!r}: use NORMAL or FULL")
        return cls(Path(path), synchronous)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTransaction]:
        async with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteTransaction(self._connection)
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[SqliteTransaction]:
        async with self._read_lock:
            self._reader.execute("BEGIN")
            try:
                yield SqliteTransaction(self._reader)
            finally:
                self._reader.execute("COMMIT")

    async def migrate(self, statements: Sequence[str]) -> None:
        async with self.transaction() as tx:
            for statement in statements:
                await tx.execute(statement)

    async def close(self) -> None:
        self._checkpointer.stop()
        async with self._lock, self._read_lock:
            self._reader.close()
            self._connection.close()


class WalCheckpointer:
    """Checkpoints a WAL database every ``interval_s`` from a daemon thread.

    A PASSIVE checkpoint never blocks the writer; sqlite3 releases the GIL while it copies
    pages and fsyncs, so the event loop keeps running.
    """

    def __init__(self, path: Path, interval_s: float = 0.5) -> None:
        self._path = path
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"wal-checkpoint-{path.name}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            connection.execute("PRAGMA busy_timeout=1000")
            while not self._stopping.wait(self._interval_s):
                # Busy (another checkpoint, e.g. from a second process) just means next time.
                with contextlib.suppress(sqlite3.OperationalError):
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            connection.close()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
