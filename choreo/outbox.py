"""The transactional outbox and its relay.

Handlers never publish: they write events to ``choreo_outbox`` in their own transaction. The
relay publishes rows right after a commit (it is notified) and sweeps leftovers periodically,
e.g. after a crash. Each publish carries ``Nats-Msg-Id`` = event id, so a re-send after a crash
between publish and delete falls inside the stream's ``duplicate_window`` and the broker drops it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from choreo import faults
from choreo.envelope import Envelope
from choreo.store.port import Database, Transaction

log = logging.getLogger(__name__)


async def next_aggregate_version(tx: Transaction, aggregate_type: str, aggregate_id: str) -> int:
    row = await tx.fetchone(
        "SELECT version FROM choreo_aggregate_versions"
        " WHERE aggregate_type = ? AND aggregate_id = ?",
        (aggregate_type, aggregate_id),
    )
    version = (int(row[0]) if row else 0) + 1
    await tx.execute(
        "INSERT INTO choreo_aggregate_versions (aggregate_type, aggregate_id, version)"
        " VALUES (?, ?, ?) ON CONFLICT (aggregate_type, aggregate_id)"
        " DO UPDATE SET version = excluded.version",
        (aggregate_type, aggregate_id, version),
    )
    return version


async def enqueue(tx: Transaction, envelope: Envelope, body: bytes) -> None:
    await tx.execute(
        "INSERT INTO choreo_outbox (event_id, subject, headers, body, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (envelope.event_id, envelope.subject, json.dumps(envelope.to_headers()), body, time.time()),
    )


class OutboxRelay:
    """Publishes outbox rows in commit order, pipelined, and deletes them once acknowledged."""

    def __init__(
        self,
        db: Database,
        js: Any,
        *,
        batch: int = 256,
        sweep_interval_s: float = 1.0,
        publish_timeout_s: float = 5.0,
    ) -> None:
        self._db = db
        self._js = js
        self._batch = batch
        self._sweep_interval_s = sweep_interval_s
        self._publish_timeout_s = publish_timeout_s
        self._wake = asyncio.Event()
        self.published = 0
        self.duplicates_dropped = 0

    def notify(self) -> None:
        """Called after a commit that wrote outbox rows: publish now, not at the next sweep."""
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self._wake.clear()
            try:
                while await self.publish_pending() == self._batch:
                    pass
            except Exception:
                log.exception("outbox relay: publish failed; retrying at the next sweep")
            wake = asyncio.create_task(self._wake.wait())
            stop = asyncio.create_task(stopping.wait())
            await asyncio.wait(
                {wake, stop}, timeout=self._sweep_interval_s, return_when=asyncio.FIRST_COMPLETED
            )
            wake.cancel()
            stop.cancel()

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Publish everything pending (graceful shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if await self.publish_pending() == 0:
                    return
            except Exception:
                log.exception("outbox relay: flush failed")
                await asyncio.sleep(0.2)

    async def pending(self) -> int:
        async with self._db.read() as tx:
            row = await tx.fetchone("SELECT COUNT(*) FROM choreo_outbox")
        return int(row[0]) if row else 0

    async def publish_pending(self) -> int:
        """Publish one batch; returns how many rows it published."""
        async with self._db.read() as tx:
            rows = await tx.fetchall(
                "SELECT seq, subject, headers, body FROM choreo_outbox ORDER BY seq LIMIT ?",
                (self._batch,),
            )
        if not rows:
            return 0
        futures = [
            await self._js.publish_async(subject, bytes(body), headers=json.loads(headers))
            for _, subject, headers, body in rows
        ]
        results = await asyncio.wait_for(
            asyncio.gather(*futures, return_exceptions=True), self._publish_timeout_s
        )
        done: list[int] = []
        for (seq, subject, _, _), result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("outbox relay: publish to %s failed: %r", subject, result)
                continue
            if result.duplicate:
                self.duplicates_dropped += 1
            done.append(seq)
        faults.crash_point(faults.AFTER_PUBLISH_BEFORE_MARK)
        if done:
            async with self._db.transaction() as tx:
                marks = ", ".join("?" * len(done))
                await tx.execute(f"DELETE FROM choreo_outbox WHERE seq IN ({marks})", done)
        self.published += len(done)
        return len(done)
