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
import threading
from collections.abc import Sequence
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
        self._ready = False
        self._init_lock = threading.Lock()

    async def _maybe_fail(self) -> bool:
        """Raise before the call, or return True to lose the response after it."""
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        if self._failure_rate and self._rng.random() < self._failure_rate:
            if self._rng.random() < 0.5:
                raise self.unavailable(f"{self.what} unavailable, try again")
            return True
        return False

    # --- the ledger, run in a worker thread; BEGIN IMMEDIATE serializes concurrent callers ---

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        # WAL + NORMAL survives a killed process (what chaos runs do); fsync per call would
        # make the fake slower than the real providers it stands in for.
        conn.execute("PRAGMA synchronous=NORMAL")
        if not self._ready:
            # Switching to WAL needs the file to itself and does not wait on a busy lock, so
            # the first calls of this object take turns setting the ledger up.
            with self._init_lock:
                if not self._ready:
                    conn.execute("PRAGMA journal_mode=WAL")
                    for statement in self.schema:
                        conn.execute(statement)
                    self._ready = True
        conn.execute("BEGIN IMMEDIATE")
        return conn
