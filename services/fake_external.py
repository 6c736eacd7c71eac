"""What the fake payment gateway and the fake shipping provider share.

Like the real providers they stand in for, each keeps its own ledger (a SQLite file of its
own, written outside the caller's transaction) and can be slow or down: ``latency_ms`` and a
seeded ``failure_rate``. Half of the injected outages happen *after* the call was recorded,
as a lost response, because that is the case idempotency keys exist for.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


class FakeExternal:
    schema: Sequence[str] = ()
    unavailable: type[Exception] = RuntimeError
    what = "provider"

    def __init__(
        self,
        ledger_path: str | Path,
        *,
        failure_rate: float = 0.0,
        latency_ms: int = 0,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be within 0..1, got {failure_rate}")
        self._path = Path(ledger_path)
        self._failure_rate = failure_rate
        self._latency_s = latency_ms / 1000
        self._rng = random.Random(seed)
        self._conn: sqlite3.Connection | None = None

    async def _maybe_fail(self) -> bool:
        """Raise before the call, or return True to lose the response after it."""
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        if self._failure_rate and self._rng.random() < self._failure_rate:
            if self._rng.random() < 0.5:
                raise self.unavailable(f"{self.what} unavailable, try again")
            return True
        return False

    # --- the ledger: one connection, used on the event loop ---
    # A ledger call is a few SQLite statements (microseconds); running them inline costs less
    # than a thread hop per call, and one caller at a time is what the event loop gives anyway.

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE on the ledger; the caller commits, anything else is rolled back."""
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent view that never takes the write lock, so an
        auditor reading the ledger from another process cannot stall the service's loop."""
        conn = self._connection()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("ROLLBACK")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, timeout=30, isolation_level=None)
            # WAL + NORMAL survives a killed process (what chaos runs do); fsync per call would
            # make the fake slower than the real providers it stands in for.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            for statement in self.schema:
                conn.execute(statement)
            self._conn = conn
        return self._conn
