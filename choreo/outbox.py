"""The transactional outbox and its relay.

Handlers never publish: they write events to ``choreo_outbox`` in their own transaction. The
relay publishes rows right after a commit (it is notified) and sweeps leftovers periodically,
e.g. after a crash. Each publish carries ``Nats-Msg-Id`` = event id, so a re-send after a crash
between publish and delete falls inside the stream's ``duplicate_window`` and the broker drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from choreo import faults
from choreo.envelope import Envelope
from choreo.store.port import Database, Transaction
from choreo.tracing import publish_span

log = logging.getLogger(__name__)


async def next_aggregate_version(tx: Transaction, aggregate_type: str, aggregate_id: str) -> int:
    """Bump and return the aggregate's version, in one statement (SQLite 3.35+ and Postgres)."""
    row = await tx.fetchone(
        "INSERT INTO choreo_aggregate_versions (aggregate_type, aggregate_id, version)"
        " VALUES (?, ?, 1) ON CONFLICT (aggregate_type, aggregate_id)"
        " DO UPDATE SET version = choreo_aggregate_versions.version + 1 RETURNING version",
        (aggregate_type, aggregate_id),
    )
    assert row is not None
    return int(row[0])


@dataclass(frozen=True)
class OutboxRow:
    """An event committed to the outbox, as the relay publishes it."""

    event_id: str
    subject: str
    headers: dict[str, str]
    body: bytes


# Parameters: event id, subject, headers (JSON), body, created at (epoch seconds).
ENQUEUE_SQL = (
    "INSERT INTO choreo_outbox (event_id, subject, headers, body, created_at)"
    " VALUES (?, ?, ?, ?, ?)"
)


async def enqueue(tx: Transaction, envelope: Envelope, body: bytes) -> OutboxRow:
    row = OutboxRow(envelope.event_id, envelope.subject, envelope.to_headers(), body)
    await tx.execute(
        ENQUEUE_SQL, (row.event_id, row.subject, json.dumps(row.headers), body, time.time())
    )
    return row


class OutboxRelay:
    """Publishes committed outbox rows, pipelined, and deletes them once the broker has them.

    The fast path: a committing handler hands its rows over in memory (``submit``), so the
    relay publishes right after the commit without reading them back. The slow path: a sweep
    of the table publishes rows left behind by a crash or a failed publish (at start-up, then
    every ``sweep_interval_s`` for rows older than that). Both can publish the same row; the
    broker drops the second copy by its ``Nats-Msg-Id``.

    Deleting published rows is batched: ids collect for up to ``delete_delay_s`` (or
    ``batch`` ids) and go in one statement, so a busy service pays one extra commit per batch
    instead of one per publish. A crash before the delete re-publishes those rows at start-up,
    well inside the stream's duplicate window, and the broker drops them.
    """

    def __init__(
        self,
        db: Database,
        js: Any,
        *,
        batch: int = 256,
        sweep_interval_s: float = 1.0,
        publish_timeout_s: float = 5.0,
        delete_delay_s: float = 0.2,
    ) -> None:
        self._db = db
        self._js = js
        self._batch = batch
        self._sweep_interval_s = sweep_interval_s
        self._publish_timeout_s = publish_timeout_s
        self._delete_delay_s = delete_delay_s
        self._queue: deque[OutboxRow] = deque()
        self._published_ids: list[str] = []  # published, not yet deleted from the table
        self._delete_due = 0.0  # when the oldest of those must be deleted
        self._wake = asyncio.Event()
        self.published = 0
        self.duplicates_dropped = 0

    def submit(self, rows: list[OutboxRow]) -> None:
        """Rows just committed: publish them now, not at the next sweep."""
        self._queue.extend(rows)
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        await self._guarded(self.sweep(min_age_s=0.0))  # whatever a crash left behind
        # One waiter for the whole run turns ``stopping`` into a wake-up.
        stop_waker = asyncio.create_task(self._wake_when(stopping))
        next_sweep = time.monotonic() + self._sweep_interval_s
        try:
            while not stopping.is_set():
                await self._guarded(self.publish_queued())
                now = time.monotonic()
                if now >= next_sweep:
                    await self._guarded(self.sweep(min_age_s=self._sweep_interval_s))
                    next_sweep = time.monotonic() + self._sweep_interval_s
                if self._published_ids and (
                    now >= self._delete_due or len(self._published_ids) >= self._batch
                ):
                    await self._guarded(self.delete_published())
                if self._queue:
                    continue
                self._wake.clear()
                until = min(next_sweep, self._delete_due) if self._published_ids else next_sweep
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, until - time.monotonic())):
                        await self._wake.wait()
        finally:
            stop_waker.cancel()

    async def _wake_when(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self._wake.set()

    async def _guarded(self, work: Awaitable[int]) -> None:
        try:
            await work
        except Exception:
            # The rows stay in the table; the next sweep tries again.
            log.exception("outbox relay: publish failed; the sweep will retry")

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Publish everything pending, queued or in the table (graceful shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                await self.publish_queued()
                await self.delete_published()
                if await self.sweep(min_age_s=0.0) == 0:
                    return
            except Exception:
                log.exception("outbox relay: flush failed")
                await asyncio.sleep(0.2)

    async def publish_queued(self) -> int:
        published = 0
        while self._queue:
            rows = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            published += await self._publish(rows)
        return published

    async def sweep(self, min_age_s: float) -> int:
        """Publish rows committed at least ``min_age_s`` ago that are still in the table."""
        published = 0
        while True:
            # Rows published but not yet deleted would be read (and sent) again: delete first.
            await self.delete_published()
            async with self._db.read() as tx:
                found = await tx.fetchall(
                    "SELECT event_id, subject, headers, body FROM choreo_outbox"
                    " WHERE created_at <= ? ORDER BY seq LIMIT ?",
                    (time.time() - min_age_s, self._batch),
                )
            if not found:
                return published
            rows = [OutboxRow(e, s, json.loads(h), bytes(b)) for e, s, h, b in found]
            done = await self._publish(rows)
            published += done
            if done < len(rows) or len(rows) < self._batch:
                return published

    async def _publish(self, rows: list[OutboxRow]) -> int:
        futures = []
        for row in rows:
            with publish_span(row.subject, row.headers) as headers:
                futures.append(await self._js.publish_async(row.subject, row.body, headers=headers))
        results = await asyncio.wait_for(
            asyncio.gather(*futures, return_exceptions=True), self._publish_timeout_s
        )
        done: list[str] = []
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("outbox relay: publish to %s failed: %r", row.subject, result)
                continue
            if result.duplicate:
                self.duplicates_dropped += 1  # sent before (sweep and fast path, or a crash)
            else:
                self.published += 1
            done.append(row.event_id)
        faults.crash_point(faults.AFTER_PUBLISH_BEFORE_MARK)
        if done and not self._published_ids:
            self._delete_due = time.monotonic() + self._delete_delay_s
        self._published_ids.extend(done)
        return len(done)

    async def delete_published(self) -> int:
        """Delete the rows the broker has acknowledged, in one transaction."""
        ids, self._published_ids = self._published_ids, []
        if not ids:
            return 0
        try:
            async with self._db.transaction() as tx:
                for start in range(0, len(ids), self._batch):
                    chunk = ids[start : start + self._batch]
                    marks = ", ".join("?" * len(chunk))
                    await tx.execute(
                        f"DELETE FROM choreo_outbox WHERE event_id IN ({marks})", chunk
                    )
        except BaseException:
            self._published_ids[:0] = ids  # try again after another delay
            self._delete_due = time.monotonic() + self._delete_delay_s
            raise
        return len(ids)
