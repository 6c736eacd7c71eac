"""Health that means something: a service says NOT_SERVING when it cannot do its work.

A process that answers gRPC is not necessarily healthy. :class:`HealthMonitor` looks every
``CHECK_EVERY_S`` at what the service depends on and sets ``grpc.health.v1`` for the overall
service ("") and each of the service's gRPC names:

- the broker connection is down (nats-py reconnecting, or closed for good);
- a consumer is stalled: its run loop has not finished a fetch cycle for
  ``health_consumer_stall_s`` although the connection is up;
- the outbox's oldest unpublished row is older than ``health_outbox_max_age_s`` (the relay is
  not getting events out; read from the database every ``OUTBOX_CHECK_EVERY_S``).

It turns SERVING again as soon as all three are fine; the process is never restarted for it.
:func:`assess` is the decision, pure, so it is tested without a broker or a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from choreo.store.port import Database

log = logging.getLogger(__name__)

CHECK_EVERY_S = 0.5
OUTBOX_CHECK_EVERY_S = 2.0


@dataclass(frozen=True)
class Observed:
    """What the monitor saw at one instant (monotonic seconds for the consumer cycles)."""

    now: float
    broker_connected: bool
    # consumer name -> monotonic time its run loop last finished a fetch cycle
    last_cycles: Mapping[str, float]
    # seconds the oldest outbox row has waited, None when the outbox is empty or unknown
    outbox_oldest_age_s: float | None


@dataclass(frozen=True)
class Verdict:
    serving: bool
    reasons: tuple[str, ...]


def assess(observed: Observed, *, consumer_stall_s: float, outbox_max_age_s: float) -> Verdict:
    """Healthy, or why not. A stalled consumer only counts while the broker is connected:
    without a connection no consumer can fetch, and the cause is the connection."""
    reasons: list[str] = []
    if not observed.broker_connected:
        reasons.append("broker connection lost")
    else:
        for name, at in sorted(observed.last_cycles.items()):
            idle = observed.now - at
            if idle > consumer_stall_s:
                reasons.append(f"consumer {name} has not fetched for {idle:.0f}s")
    age = observed.outbox_oldest_age_s
    if age is not None and age > outbox_max_age_s:
        reasons.append(f"outbox oldest row waits {age:.0f}s (> {outbox_max_age_s:.0f}s)")
    return Verdict(serving=not reasons, reasons=tuple(reasons))


async def outbox_backlog(db: Database) -> tuple[int, float | None]:
    """Unpublished outbox rows and the wall-clock time the oldest was written."""
    async with db.read() as tx:
        row = await tx.fetchone("SELECT COUNT(*), MIN(created_at) FROM choreo_outbox")
    if row is None:
        return 0, None
    count, oldest = row
    return int(count or 0), float(oldest) if oldest is not None else None


SetStatus = Callable[[bool], Awaitable[None]]


class HealthMonitor:
    """Polls the service's dependencies and reports each change of verdict through
    ``set_status`` (True: SERVING)."""

    def __init__(
        self,
        *,
        service: str,
        broker_connected: Callable[[], bool],
        last_cycles: Callable[[], Mapping[str, float]],
        db: Database,
        set_status: SetStatus,
        consumer_stall_s: float,
        outbox_max_age_s: float,
        check_every_s: float = CHECK_EVERY_S,
    ) -> None:
        self._service = service
        self._broker_connected = broker_connected
        self._last_cycles = last_cycles
        self._db = db
        self._set_status = set_status
        self._consumer_stall_s = consumer_stall_s
        self._outbox_max_age_s = outbox_max_age_s
        self._check_every_s = check_every_s
        self._outbox_oldest: float | None = None
        self._outbox_read_at = float("-inf")
        self.verdict = Verdict(serving=True, reasons=())

    async def _outbox_age(self) -> float | None:
        # The database is asked every few seconds, not on every check: the age grows slowly
        # and the threshold is long, while the broker check must be quick.
        if time.monotonic() - self._outbox_read_at >= OUTBOX_CHECK_EVERY_S:
            self._outbox_read_at = time.monotonic()
            try:
                _, self._outbox_oldest = await outbox_backlog(self._db)
            except Exception as exc:  # a database that cannot answer does not decide this
                log.debug("%s: outbox age unknown: %r", self._service, exc)
        if self._outbox_oldest is None:
            return None
        return max(0.0, time.time() - self._outbox_oldest)

    async def check(self) -> Verdict:
        observed = Observed(
            now=time.monotonic(),
            broker_connected=self._broker_connected(),
            last_cycles=dict(self._last_cycles()),
            outbox_oldest_age_s=await self._outbox_age(),
        )
        verdict = assess(
            observed,
            consumer_stall_s=self._consumer_stall_s,
            outbox_max_age_s=self._outbox_max_age_s,
        )
        if verdict.serving != self.verdict.serving:
            if verdict.serving:
                log.warning("%s: healthy again: SERVING", self._service)
            else:
                log.warning("%s: NOT_SERVING: %s", self._service, "; ".join(verdict.reasons))
            await self._set_status(verdict.serving)
        self.verdict = verdict
        return verdict

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.check()
            except Exception:
                log.exception("%s: health check failed", self._service)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._check_every_s)
