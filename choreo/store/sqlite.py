"""SQLite adapter of the storage port: one file per service, WAL journal.

Why synchronous sqlite3 on the event loop: a local SQLite statement takes microseconds, far
less than a thread hop (what aiosqlite pays on every call). One connection serves the whole
service, so transactions are serialised by an asyncio lock; handlers must not do slow I/O while
holding a transaction (call external providers before touching ``ctx.tx``).

``synchronous=NORMAL`` in WAL mode survives a process crash (SIGKILL) without losing a commit;
only a power loss can drop the last transactions. Set ``?synchronous=FULL`` in the URL for that.

Group commit: each ``transaction()`` is a SAVEPOINT inside a write transaction that stays
open until the end of the current event-loop step, so the units that finish in one step
(handlers of one fetched batch, other consumers, a gRPC command) share a single ``COMMIT``.
A unit that fails rolls back to its savepoint alone. ``transaction()`` still returns only
once its unit is committed, so callers ack or answer exactly as before; if the shared
``COMMIT`` fails, every unit in it raises. A unit that fails waits for that ``COMMIT`` too, since
it may have read what the units before it wrote. A unit that awaits something slow inside
its transaction delays the commit of those before it (one more reason not to). A caller
cancelled while it waits may still see its unit committed, as after a crash before an ack.

Checkpoints stay SQLite's own (in the ``COMMIT`` that crosses 1000 WAL pages). A checkpoint
thread was tried and dropped: under steady writes it never won the race to reset the WAL,
which grew without bound (1.3 GB in 40 s of load, and its index with it in memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlparse

from choreo.store.migrations import apply_versioned
from choreo.store.port import Params, Row

DIALECT = "sqlite"


log = logging.getLogger(__name__)


def path_of(url: str) -> Path:
    """The file of a ``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db`` URL."""
    parsed = urlparse(url)
    path = parsed.netloc + parsed.path if parsed.netloc else parsed.path
    if path.startswith("/") and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = path[1:]
    if path.startswith("//"):
        path = "/" + path.lstrip("/")  # sqlite:////abs parses as //abs: one leading slash
    return Path(path)


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
        self._lock = asyncio.Lock()  # one unit at a time inside the open transaction
        self._group: list[asyncio.Future[None]] | None = None  # units awaiting the COMMIT
        self._commit_scheduled = False
        self.commits = 0  # COMMITs run (units / commits = how well group commit groups)
        # WAL lets a second connection read the last committed state while the first writes.
        self._reader = sqlite3.connect(
            f"file:{path.resolve()}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        self._reader.execute("PRAGMA busy_timeout=5000")
        self._read_lock = asyncio.Lock()
        # Stateless wrappers of the two connections, made once instead of once per unit.
        self._writer_tx = SqliteTransaction(self._connection)
        self._reader_tx = SqliteTransaction(self._reader)

    @classmethod
    def from_url(cls, url: str) -> SqliteDatabase:
        parsed = urlparse(url)
        path = path_of(url)
        synchronous = parse_qs(parsed.query).get("synchronous", ["NORMAL"])[0].upper()
        if synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous={synchronous} in {url!r}: use NORMAL or FULL")
        if not path.is_absolute():
            # sqlite:///tmp/x.db is tmp/x.db (as in SQLAlchemy): say where the file really is.
            log.info(
                "database %s is the file %s (sqlite:/// is followed by a relative path; "
                "sqlite:////abs/path.db names an absolute one)",
                url,
                path.resolve(),
            )
        return cls(path, synchronous)

    def transaction(self) -> _Unit:
        return _Unit(self)

    def _schedule_commit(self) -> None:
        if not self._commit_scheduled:
            self._commit_scheduled = True
            asyncio.get_running_loop().call_soon(self._commit_group)

    def _commit_group(self) -> None:
        """Commit the open transaction for every unit that finished in it (a loop callback)."""
        self._commit_scheduled = False
        if self._group is None or self._lock.locked():
            return  # nothing open, or a unit is inside: it schedules the commit when it ends
        waiters, self._group = self._group, None
        self._finish_group(waiters)

    def _finish_group(self, waiters: list[asyncio.Future[None]]) -> None:
        try:
            self._connection.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._connection.execute("ROLLBACK")
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[SqliteTransaction]:
        async with self._read_lock:
            self._reader.execute("BEGIN")
            try:
                yield self._reader_tx
            finally:
                self._reader.execute("COMMIT")

    async def migrate(self, statements: Sequence[str]) -> None:
        async with self.transaction() as tx:
            await apply_versioned(tx, statements)

    async def close(self) -> None:
        async with self._lock, self._read_lock:
            try:
                if self._group is not None:  # units awaiting their commit get it now
                    waiters, self._group = self._group, None
                    self._finish_group(waiters)
            finally:
                self._reader.close()
                self._connection.close()


class _Unit:
    """One ``transaction()``: a SAVEPOINT inside the group's open write transaction, committed
    with the group (see the module's docstring). The unit that opens the group needs no
    savepoint: the transaction holds nothing but its own work, so undoing it is a ROLLBACK of
    the whole (and, with no unit before it, there is no COMMIT to wait for). Below saturation
    most groups hold one unit, and that spares two statements per event.

    A class rather than an ``@asynccontextmanager`` generator: every handled event opens one,
    and the generator's machinery cost more than the unit's own Python work.
    """

    __slots__ = ("_db", "_opened_group")

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        self._opened_group = False

    async def __aenter__(self) -> SqliteTransaction:
        db = self._db
        await db._lock.acquire()
        try:
            if db._group is None:
                if db._connection.in_transaction:  # a failed ROLLBACK left one open
                    db._connection.execute("ROLLBACK")
                db._connection.execute("BEGIN IMMEDIATE")
                db._group = []
                self._opened_group = True
            else:
                db._connection.execute("SAVEPOINT unit")
        except BaseException:
            # However this unit ended, the units before it must not wait forever.
            db._schedule_commit()
            db._lock.release()
            raise
        return db._writer_tx

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        db = self._db
        connection = db._connection
        try:
            if exc is not None:
                if self._opened_group:
                    self._roll_back_group()
                    return False  # nothing before it in the group: no COMMIT to wait for
                connection.execute("ROLLBACK TO unit")
                if not isinstance(exc, Exception):  # cancelled: nothing to decide, leave at once
                    connection.execute("RELEASE unit")
                    return False
            if not self._opened_group:
                connection.execute("RELEASE unit")
            committed = asyncio.get_running_loop().create_future()
            assert db._group is not None  # opened by __aenter__, under the lock held since
            db._group.append(committed)
        finally:
            db._schedule_commit()  # the units before this one must not wait forever
            db._lock.release()
        # A failed unit waits too: it may have read what earlier units of the group wrote, so
        # its verdict (dead letter, duplicate) only stands once that is committed. If the
        # COMMIT fails, the COMMIT's error is what every unit raises; otherwise a failed unit's
        # own exception goes on (False: not suppressed).
        await committed
        return False

    def _roll_back_group(self) -> None:
        """Undo the group this unit opened and holds alone (the lock is still held)."""
        db = self._db
        try:
            if db._connection.in_transaction:  # an error may have rolled it back already
                db._connection.execute("ROLLBACK")
        finally:
            db._group = None  # a failed ROLLBACK is retried when the next group opens
