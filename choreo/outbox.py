"""The transactional outbox and its relay.

Handlers never publish: they write events to ``choreo_outbox`` in their own transaction. The
relay publishes rows right after a commit (it is notified) and sweeps leftovers periodically,
e.g. after a crash. Each publish carries ``Nats-Msg-Id`` = event id, so a re-send after a crash
between publish and delete falls inside the stream's ``duplicate_window`` and the broker drops it.

The relay must never wedge, whatever a row or the broker does:
- a row that can never be published (over the server's ``max_payload`` with its headers, or
  refused for good) is parked with its reason (``choreo.dlq``), never sent: an oversized
  message makes the server close the connection. The rows behind it flow.
- publishes go through a ``PublishWindow``: a bounded number awaiting their acks, each slot
  given back however the publish ends (ack, error, timeout, send failure).
- while the connection is down nothing is sent (the rows are in the table, the sweep sends
  them when it is back), so a long outage cannot fill nats-py's reconnect buffer.
- on Postgres, replicas sharing the database claim swept rows with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.js import api
from nats.js.errors import APIError

from choreo import checkpoints, dlq
from choreo.broker import BrokerLink
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


# JetStream errors that a retry cannot fix: over the stream's max_msg_size (10054,
# JSStreamMessageExceedsMaximumErr). Anything else (no stream yet, a leader election, a
# timeout) is retried by the sweep.
PERMANENT_API_ERRORS = frozenset({10054})
# The server reads a publish's subject, reply inbox and sizes in one control line of at most
# 4 KiB (its max_control_line default) and closes the connection over a longer one.
MAX_SUBJECT_BYTES = 3072


def header_block_size(headers: Mapping[str, str]) -> int:
    """Bytes the headers add to a message, as nats-py writes them: the server counts them
    with the body against ``max_payload``."""
    size = len(b"NATS/1.0\r\n") + 2  # the status line, and the blank line closing the block
    for key, value in headers.items():
        size += len(key.strip().encode()) + 2 + len(value.strip().encode()) + 2
    return size


def header_block_bound(headers: Mapping[str, str]) -> int:
    """An upper bound of ``header_block_size`` at a fraction of its cost (no encoding: a
    character is at most 4 bytes in UTF-8), for the hot path: only rows near the limit pay
    for the exact size."""
    chars = sum(map(len, headers)) + sum(map(len, headers.values()))
    return 12 + 4 * (chars + len(headers))


class PublishWindow:
    """JetStream publishes awaiting their acks on one connection, at most ``limit`` of them.

    Like nats-py's ``publish_async`` (a reply inbox, one future per message), but every slot is
    given back however the publish ends: the ack, an error reply, a cancelled future (a timeout)
    or a send that raises (nats-py's own keeps the slot then, and after 4000 it blocks for good).
    The number in flight is simply the number of futures registered, so it cannot drift.
    """

    def __init__(self, nc: Any, limit: int) -> None:
        self._nc = nc
        self._limit = limit
        self._waiting: dict[str, asyncio.Future[api.PubAck]] = {}
        self._freed = asyncio.Event()
        self._prefix = ""
        self._prefix_bytes = b""
        self._count = 0

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    async def publish(
        self, subject: str, body: bytes, headers: dict[str, str], wait_s: float
    ) -> asyncio.Future[api.PubAck]:
        """Send one message; the future resolves with its ack. Raises if it was not sent."""
        if not self._prefix:
            prefix = f"{self._nc.new_inbox()}."
            if hasattr(self._nc, "subscribe_inline"):  # the runtime's client: no task per reply
                await self._nc.subscribe_inline(f"{prefix}*", self._on_raw_reply)
            else:
                await self._nc.subscribe(f"{prefix}*", cb=self._on_reply)
            self._prefix = prefix
            self._prefix_bytes = prefix.encode()
        if len(self._waiting) >= self._limit:  # (no timer on the hot path: only when full)
            async with asyncio.timeout(wait_s):
                while len(self._waiting) >= self._limit:
                    self._freed.clear()
                    await self._freed.wait()
        self._count += 1
        token = str(self._count)
        future: asyncio.Future[api.PubAck] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        future.add_done_callback(lambda _: self._settle(token))
        try:
            await self._nc.publish(subject, body, reply=self._prefix + token, headers=headers)
        except BaseException:
            self._settle(token)  # now, not in a later callback: the caller sees it at once
            future.cancel()
            raise
        return future

    def _settle(self, token: str) -> None:
        if self._waiting.pop(token, None) is not None:
            self._freed.set()

    def give_back(self, futures: list[asyncio.Future[api.PubAck]]) -> None:
        """Cancel the futures still waiting and free every settled slot now (done-callbacks
        would only run on the next loop step)."""
        for future in futures:
            future.cancel()
        for token, future in list(self._waiting.items()):
            if future.done():
                self._settle(token)

    def cancel_all(self) -> None:
        for future in list(self._waiting.values()):
            future.cancel()
        self._waiting.clear()
        self._freed.set()

    async def _on_reply(self, msg: Any) -> None:
        """A reply through a nats-py subscription (a client other than the runtime's)."""
        status = (msg.headers or {}).get("Status")
        self._settle_reply(msg.subject[len(self._prefix) :], msg.data, status == "503")

    def _on_raw_reply(self, subject: bytes, data: bytes, headers: bytes | None) -> None:
        """A reply taken inline by :class:`choreo.natsconn.RuntimeClient`: the status line of
        a header block is ``NATS/1.0 503`` when no stream took the publish."""
        no_stream = headers is not None and headers.startswith(b"NATS/1.0 503")
        token = subject[len(self._prefix_bytes) :].decode()
        self._settle_reply(token, data, no_stream)

    def _settle_reply(self, token: str, data: bytes, no_stream: bool) -> None:
        future = self._waiting.get(token)
        if future is None or future.done():
            return  # timed out and given back already
        if no_stream:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            reply = json.loads(data)
            if "error" in reply:
                error = reply["error"]
                future.set_exception(
                    APIError(
                        code=error.get("code"),
                        description=error.get("description"),
                        err_code=error.get("err_code"),
                    )
                )
            else:
                future.set_result(_pub_ack(reply))
        except Exception as exc:  # a reply we cannot read: the row is retried
            future.set_exception(exc)


# PubAck's fields, looked up once: ``PubAck.from_response`` lists them for every reply.
_PUB_ACK_FIELDS = tuple(f.name for f in dataclasses.fields(api.PubAck))


def _pub_ack(reply: dict[str, Any]) -> api.PubAck:
    """``api.PubAck.from_response(reply)``: the reply's known fields, unknown ones ignored."""
    return api.PubAck(**{name: reply[name] for name in _PUB_ACK_FIELDS if name in reply})


@dataclass
class SendResult:
    """What one batch's publish came to."""

    done: list[str] = field(default_factory=list)  # acked (stored or a dropped duplicate)
    unpublishable: list[tuple[OutboxRow, str, str]] = field(default_factory=list)  # reason, why
    broker_gone: bool = False  # the connection failed mid-batch: stop, the sweep retries


@dataclass(eq=False)
class Sending:
    """A batch on its way: what was sent, with the futures of its acks, and by when they are
    due; its result so far holds the rows that were never sent.

    ``watch`` counts the futures down with a callback each, so the relay needs no task and no
    ``asyncio.wait`` per batch to learn that one has settled."""

    window: PublishWindow
    deadline: float  # time.monotonic()
    sent: list[tuple[OutboxRow, asyncio.Future[api.PubAck]]] = field(default_factory=list)
    result: SendResult = field(default_factory=SendResult)
    settled: bool = False
    _unsettled: int = 0
    _on_settled: Callable[[Sending], None] | None = None
    _waiter: asyncio.Future[None] | None = None

    def watch(self, on_settled: Callable[[Sending], None] | None = None) -> None:
        """Count the futures down, and call ``on_settled(self)`` (if given) once every one has
        ended (acked, failed, cancelled)."""
        self._on_settled = on_settled
        self._unsettled = len(self.sent)
        if not self._unsettled:
            self._settle()
            return
        for _, future in self.sent:
            future.add_done_callback(self._one_ended)

    def _one_ended(self, _: asyncio.Future[api.PubAck]) -> None:
        self._unsettled -= 1
        if not self._unsettled:
            self._settle()

    def _settle(self) -> None:
        self.settled = True
        if self._on_settled is not None:
            self._on_settled(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def expire(self) -> None:
        """Give back every slot still awaited (past the deadline, or given up): their futures
        are cancelled, so the batch settles, and its rows stay in the table for the sweep."""
        futures = [future for _, future in self.sent]
        late = sum(not future.done() for future in futures)
        if late:
            log.warning(
                "outbox relay: no ack in time for %d of %d rows; the sweep retries",
                late,
                len(futures),
            )
        self.window.give_back(futures)

    async def wait(self) -> None:
        """Until the watched batch has settled; past its deadline, expire it first. Its slots
        are given back however the wait ends (a cancelled wait included)."""
        try:
            if self.settled:
                return
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            timeout = max(0.0, self.deadline - time.monotonic())
            await asyncio.wait([self._waiter], timeout=timeout)
            if not self.settled:
                self.expire()
                await self._waiter
        finally:
            self.expire()  # frees settled slots now, not in a later callback


class OutboxRelay:
    """Publishes committed outbox rows, pipelined, and deletes them once the broker has them.

    The fast path: a committer hands its rows over in memory, so the relay publishes right
    after the commit without reading them back. A handler's rows wait for the relay's next
    turn (``submit``), where the rows of every handler that committed in the same loop step go
    out as one batch. A command's rows go out from the command's own task (``send_now``), in
    its commit's loop step and before it answers its client, unless the relay is busy: then
    they queue behind what it is sending, so the order of sends stays the order of commits.
    The slow path: a sweep
    of the table publishes rows left behind by a crash, a failed publish or a broker outage (at
    start-up, then every ``sweep_interval_s`` for rows older than that). Both can publish the
    same row; the broker drops the second copy by its ``Nats-Msg-Id``.

    Deleting published rows is batched: ids collect for up to ``delete_delay_s`` (or
    ``batch`` ids) and go in one statement, so a busy service pays one extra commit per batch
    instead of one per publish. A crash before the delete re-publishes those rows at start-up,
    well inside the stream's duplicate window, and the broker drops them.

    On Postgres, where replicas of a service may share the database, a sweep claims its rows
    (``FOR UPDATE SKIP LOCKED``) and deletes what it published in that same transaction, so two
    replicas never sweep the same row. SQLite has a single process per file; its sweep reads.
    """

    def __init__(
        self,
        db: Database,
        broker: BrokerLink,
        *,
        service: str = "service",
        batch: int = 256,
        sweep_interval_s: float = 1.0,
        publish_timeout_s: float = 5.0,
        delete_delay_s: float = 0.2,
        max_in_flight: int = 1024,
    ) -> None:
        self._db = db
        self._broker = broker
        self._service = service
        self._batch = batch
        self._sweep_interval_s = sweep_interval_s
        self._publish_timeout_s = publish_timeout_s
        self._delete_delay_s = delete_delay_s
        self._max_in_flight = max_in_flight
        self._window: PublishWindow | None = None
        self._window_generation = -1
        self._queue: deque[OutboxRow] = deque()
        self._published_ids: list[str] = []  # published, not yet deleted from the table
        self._delete_due = 0.0  # when the oldest of those must be deleted
        self._wake = asyncio.Event()
        # Held by whoever sends: the run loop from its wake-up until it parks again, or a
        # committer's ``send_now``. One sender at a time keeps the sends in commit order.
        self._sender = asyncio.Lock()
        # Batches sent whose acks the run loop did not wait for, oldest first (settled ones
        # leave from the front), and the follow-ups some of them need (parking, checkpoints).
        self._sending: deque[Sending] = deque()
        self._following_up: set[asyncio.Task[None]] = set()
        self._taken = 0  # rows of those batches the broker took, since ``settled()`` last said
        self._alarm: asyncio.TimerHandle | None = None  # wakes the run loop when work is due
        self._alarm_at = 0.0
        self._broker_was_down = False
        self.published = 0
        self.duplicates_dropped = 0
        self.parked = 0

    @property
    def in_flight(self) -> int:
        """Publishes sent and not yet settled (acked, failed or timed out)."""
        return self._window.in_flight if self._window is not None else 0

    @property
    def sending(self) -> bool:
        """Someone is sending: the run loop in its turn, or a command's ``send_now``."""
        return self._sender.locked()

    @property
    def queued(self) -> int:
        """Rows handed over by committers and not yet taken by the relay."""
        return len(self._queue)

    def submit(self, rows: list[OutboxRow]) -> None:
        """Rows just committed: the run loop publishes them at its next turn, not at the next
        sweep."""
        self._queue.extend(rows)
        self._wake.set()

    async def send_now(self, rows: list[OutboxRow]) -> None:
        """Rows the caller just committed: sent from the caller's task and written to the
        socket in this loop step (not in the client's flusher's next turn; with the runtime's
        client), when nothing is being sent or waits to be and the window has room for them;
        otherwise queued behind that (``submit``), so a command never waits for the broker.
        Whatever fails stays in the table for the sweep, as in the run loop, and never reaches
        the caller: its commit stands either way."""
        if self._sender.locked() or self._queue or self.in_flight + len(rows) > self._max_in_flight:
            self.submit(rows)
            return
        async with self._sender:
            self._queue.extend(rows)
            await self._guarded(self.send_queued())
        write_pending = getattr(self._broker.nc, "write_pending", None)
        if write_pending is not None:
            write_pending()

    async def run(self, stopping: asyncio.Event) -> None:
        async with self._sender:  # whatever a crash left behind, before any newer row
            await self._guarded(self.sweep(min_age_s=0.0))
        # One waiter for the whole run turns ``stopping`` into a wake-up.
        stop_waker = asyncio.create_task(self._wake_when(stopping))
        next_sweep = time.monotonic() + self._sweep_interval_s
        loop = asyncio.get_running_loop()
        try:
            while not stopping.is_set():
                async with self._sender:
                    await self._guarded(self.send_queued())
                    now = time.monotonic()
                    self._expire_overdue(now)
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
                if self._sending:
                    until = min(until, self._sending[0].deadline)
                # One timer, moved only when the time to wake changes (not once per batch).
                if self._alarm is not None and self._alarm_at != until:
                    self._alarm.cancel()
                    self._alarm = None
                if self._alarm is None:
                    self._alarm_at = until
                    delay = max(0.0, until - time.monotonic())
                    self._alarm = loop.call_at(loop.time() + delay, self._ring)
                await self._wake.wait()
        finally:
            stop_waker.cancel()
            if self._alarm is not None:
                self._alarm.cancel()
                self._alarm = None

    def _ring(self) -> None:
        self._alarm = None
        self._wake.set()

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
                await self.publish_queued()  # the queue, and the batches still awaiting acks
                await self.delete_published()
                if await self.sweep(min_age_s=0.0) == 0:
                    return
            except Exception:
                log.exception("outbox relay: flush failed")
                await asyncio.sleep(0.2)

    def _connected(self) -> bool:
        nc = self._broker.nc
        if nc is not None and nc.is_connected:
            if self._broker_was_down:
                log.warning("outbox relay: broker back; publishing the outbox")
                self._broker_was_down = False
            return True
        if not self._broker_was_down:
            log.warning("outbox relay: broker unreachable; rows wait in the outbox")
            self._broker_was_down = True
        return False

    async def publish_queued(self) -> int:
        """Send every queued row and wait for the acks of every batch sent so far: how many
        rows the broker took (stored, or dropped as duplicates)."""
        await self.send_queued()
        return await self.settled()

    async def send_queued(self) -> int:
        """Send every queued row now, and return how many were sent; each batch settles when
        its acks come (``Sending.watch``), without the relay waiting for it.

        The relay does not wait for one batch's acks before sending the next: a row committed
        while a batch is on its way to the broker goes out at once instead of a round trip
        later. The order of sends is the order of commits, as before; a batch that fails
        leaves its rows in the table for the sweep either way."""
        sent = 0
        while self._queue:
            if not self._connected():
                # Nothing is sent into a dead connection (it would only fill nats-py's
                # reconnect buffer); the rows are in the table and the sweep sends them later.
                self._queue.clear()
                break
            rows = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            sending = await self._start_send(rows)
            self._sending.append(sending)
            sending.watch(self._on_settled)
            sent += len(sending.sent)
        return sent

    async def settled(self) -> int:
        """Wait for every batch sent so far to settle (or expire): how many of their rows the
        broker took since the last call."""
        while self._sending:
            oldest = self._sending[0]
            await oldest.wait()
            if self._sending and self._sending[0] is oldest:
                self._sending.popleft()
        while self._following_up:
            await asyncio.gather(*self._following_up)
        taken, self._taken = self._taken, 0
        return taken

    def _expire_overdue(self, now: float) -> None:
        """Drop settled batches from the front, expiring those past their deadline."""
        while self._sending and (self._sending[0].settled or self._sending[0].deadline <= now):
            oldest = self._sending.popleft()
            if not oldest.settled:
                oldest.expire()

    def _on_settled(self, sending: Sending) -> None:
        """A pipelined batch has settled (a future's callback): mark what the broker took. A
        batch with rows to park, or a harness listening, goes on in a task."""
        result = self._sort(sending)
        if result.unpublishable or checkpoints.listening():
            task = asyncio.create_task(self._follow_up(result))
            self._following_up.add(task)
            task.add_done_callback(self._following_up.discard)
            return
        self._taken_now(result)

    async def _follow_up(self, result: SendResult) -> None:
        try:
            await checkpoints.reached(checkpoints.AFTER_PUBLISH_BEFORE_MARK)
            self._taken_now(result)
            if result.unpublishable:
                async with self._db.transaction() as tx:
                    await self._park(tx, result.unpublishable)
                await self._file_notices()
        except Exception:
            # The rows stay in the table; the next sweep tries again.
            log.exception("outbox relay: publish failed; the sweep will retry")

    def _taken_now(self, result: SendResult) -> None:
        first = not self._published_ids
        self._mark_published(result.done)
        self._taken += len(result.done)
        if first and result.done:
            self._wake.set()  # the run loop times the batched delete from the first id

    async def sweep(self, min_age_s: float) -> int:
        """Publish rows committed at least ``min_age_s`` ago that are still in the table.

        A row that fails stays for the next sweep; the rows behind it are still sent."""
        if self._db.dialect == "postgres":
            return await self._sweep_claiming(min_age_s)
        published = 0
        after_seq = 0
        while self._connected():
            # Rows published but not yet deleted would be read (and sent) again: delete first.
            await self.delete_published()
            async with self._db.read() as tx:
                found = await tx.fetchall(
                    f"SELECT {_ROW_COLUMNS} FROM choreo_outbox"
                    " WHERE seq > ? AND created_at <= ? ORDER BY seq LIMIT ?",
                    (after_seq, time.time() - min_age_s, self._batch),
                )
            if not found:
                break
            after_seq = int(found[-1][0])
            result = await self._send([_row(found_row) for found_row in found])
            self._mark_published(result.done)
            if result.unpublishable:
                async with self._db.transaction() as tx:
                    await self._park(tx, result.unpublishable)
            published += len(result.done)
            if result.broker_gone or len(found) < self._batch:
                break
        await self._file_notices()
        return published

    async def _sweep_claiming(self, min_age_s: float) -> int:
        """The Postgres sweep: claim a batch (rows another replica is sweeping are skipped),
        publish it, delete or park what is settled, then commit: the claim lasts exactly as
        long as the publish. A replica that dies mid-way releases its claim with its
        connection; the next sweep re-sends, and the broker drops what it already has."""
        published = 0
        after_seq = 0
        while self._connected():
            await self.delete_published()
            async with self._db.transaction() as tx:
                found = await tx.fetchall(
                    f"SELECT {_ROW_COLUMNS} FROM choreo_outbox"
                    " WHERE seq > ? AND created_at <= ? ORDER BY seq LIMIT ?"
                    " FOR UPDATE SKIP LOCKED",
                    (after_seq, time.time() - min_age_s, self._batch),
                )
                if not found:
                    break
                after_seq = int(found[-1][0])
                result = await self._send([_row(found_row) for found_row in found])
                if result.done:
                    await tx.execute(
                        "DELETE FROM choreo_outbox WHERE event_id = ANY(?::text[])",
                        (result.done,),
                    )
                await self._park(tx, result.unpublishable)
            published += len(result.done)
            if result.broker_gone or len(found) < self._batch:
                break
        await self._file_notices()
        return published

    def _current_window(self) -> PublishWindow:
        """The window of the current connection (a new one after the link re-created it)."""
        if self._window is None or self._window_generation != self._broker.generation:
            if self._window is not None:
                self._window.cancel_all()  # their acks would come on the dead connection
            self._window = PublishWindow(self._broker.nc, self._max_in_flight)
            self._window_generation = self._broker.generation
        return self._window

    async def _send(self, rows: list[OutboxRow]) -> SendResult:
        """Publish ``rows`` and wait (up to ``publish_timeout_s``) for their acks."""
        return await self._finish_send(await self._start_send(rows))

    async def _start_send(self, rows: list[OutboxRow]) -> Sending:
        """Publish ``rows`` (those that can be: the others are set aside as unpublishable),
        without waiting for their acks."""
        window = self._current_window()
        sending = Sending(window, time.monotonic() + self._publish_timeout_s)
        result = sending.result
        max_payload = int(self._broker.nc.max_payload)
        try:
            for row in rows:
                with publish_span(row.subject, row.headers) as headers:
                    size = len(row.body) + header_block_bound(headers)
                    if size > max_payload:
                        size = len(row.body) + header_block_size(headers)
                    if size > max_payload:
                        # Never sent: the server would close the connection over it.
                        result.unpublishable.append(
                            (
                                row,
                                dlq.TOO_LARGE,
                                f"{size} bytes with headers ({len(row.body)} body) >"
                                f" the broker's max_payload {max_payload}",
                            )
                        )
                        continue
                    if len(row.subject.encode()) > MAX_SUBJECT_BYTES:
                        result.unpublishable.append(
                            (
                                row,
                                dlq.REFUSED,
                                f"subject of {len(row.subject.encode())} bytes >"
                                f" {MAX_SUBJECT_BYTES}: over the server's control line",
                            )
                        )
                        continue
                    try:
                        future = await window.publish(
                            row.subject, row.body, headers, self._publish_timeout_s
                        )
                    except (nats.errors.BadSubjectError, nats.errors.BadHeaderError) as exc:
                        result.unpublishable.append((row, dlq.REFUSED, repr(exc)))
                        continue
                    sending.sent.append((row, future))
        except TimeoutError:  # the window stayed full for publish_timeout_s
            log.warning(
                "outbox relay: no room to publish %d rows within %.1fs; the sweep retries",
                len(rows),
                self._publish_timeout_s,
            )
        except nats.errors.Error as exc:
            # The connection dropped (or its reconnect buffer is full) mid-batch.
            log.warning("outbox relay: publish failed (%r); the sweep retries", exc)
            result.broker_gone = True
        except BaseException:
            window.give_back([future for _, future in sending.sent])
            raise
        return sending

    async def _finish_send(self, sending: Sending) -> SendResult:
        """Wait for the acks of what ``_start_send`` sent, up to its deadline, and sort the
        rows by how their publish ended."""
        sending.watch()
        await sending.wait()
        result = self._sort(sending)
        await checkpoints.reached(checkpoints.AFTER_PUBLISH_BEFORE_MARK)
        return result

    def _sort(self, sending: Sending) -> SendResult:
        """Sort a settled batch's rows by how their publish ended, and count them."""
        result = sending.result
        for row, future in sending.sent:
            if future.cancelled():
                continue
            error = future.exception()
            if error is None:
                if future.result().duplicate:
                    self.duplicates_dropped += 1  # sent before (sweep and fast path, a crash)
                else:
                    self.published += 1
                result.done.append(row.event_id)
            elif isinstance(error, APIError) and error.err_code in PERMANENT_API_ERRORS:
                result.unpublishable.append((row, dlq.REFUSED, str(error)))
            else:
                log.warning("outbox relay: publish to %s failed: %r", row.subject, error)
        return result

    def _mark_published(self, ids: list[str]) -> None:
        if ids and not self._published_ids:
            self._delete_due = time.monotonic() + self._delete_delay_s
        self._published_ids.extend(ids)

    async def _park(self, tx: Transaction, rows: list[tuple[OutboxRow, str, str]]) -> None:
        for row, reason, detail in rows:
            if await dlq.park(
                tx, event_id=row.event_id, service=self._service, reason=reason, detail=detail
            ):
                self.parked += 1
                log.error(
                    "outbox relay: event %s on %s can never be published (%s: %s); parked in"
                    " choreo_outbox_parked, see `choreo dlq parked`",
                    row.event_id,
                    row.subject,
                    reason,
                    detail,
                )

    async def _file_notices(self) -> None:
        """File the DLQ notice of every parked row that has none yet (retried each sweep)."""
        if not self._connected():
            return
        for parked in await dlq.list_parked(self._db, unnoticed_only=True):
            try:
                await dlq.file_parked_notice(
                    self._broker.js, parked, timeout_s=self._publish_timeout_s
                )
            except Exception as exc:
                log.warning("outbox relay: DLQ notice for %s not filed (%r)", parked.event_id, exc)
                return
            await dlq.mark_notice_filed(self._db, parked.event_id)

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


_ROW_COLUMNS = "seq, event_id, subject, headers, body"


def _row(found: tuple[Any, ...]) -> OutboxRow:
    _, event_id, subject, headers, body = found
    return OutboxRow(event_id, subject, json.loads(headers), bytes(body))
