"""What a handler sees, and the unit of work that commits its effects exactly once.

A handler gets a :class:`HandlerContext`. Its ``tx`` opens lazily: the transaction (and the
SQLite write lock) is taken on the first statement, so a handler can call a slow external
provider first without holding up other handlers. Opening the transaction records the event in
the inbox; a clash there means another delivery already handled it and everything rolls back.
Events passed to ``emit`` are written to the outbox in the same transaction at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message

from choreo import inbox, outbox
from choreo.envelope import Envelope, root_envelope
from choreo.errors import CallTimedOut
from choreo.settings import RuntimeSettings
from choreo.store.port import Database, Params, Row, Transaction
from choreo.tracing import current_trace_headers


class AlreadyHandled(Exception):
    """The inbox already holds this event id: the delivery is a duplicate."""


Handler = Callable[["HandlerContext", Any], Awaitable[None]]
# A service's reactions, written as data: event class -> handler.
Handlers = Mapping[type[Message], Handler]


@dataclass(frozen=True, slots=True)
class GaveUp:
    """Why the runtime stopped trying a handler: a dead-letter reason (``retries_exhausted``,
    ``handler_rejected``, ``delivery_limit_exceeded``), its detail (what the last attempt
    met), how often the broker had delivered the message by then, and how many times the
    handler had actually run without success (deliveries that never reached it, such as a
    batch-mate's crash, are not attempts)."""

    reason: str
    detail: str
    deliveries: int
    attempts: int = 0


# What a step does when its handler gives up (retries exhausted, PermanentError, a message that
# kept crashing its process): make the outside world consistent, then emit the step's business
# failure event, in one transaction with the inbox record, so the saga's usual compensations run.
GiveUpHandler = Callable[["HandlerContext", Any, GaveUp], Awaitable[None]]
# Written as data next to HANDLERS: event class -> give-up handler.
GiveUps = Mapping[type[Message], GiveUpHandler]
AggregateTypeOf = Callable[[type[Message]], str]
T = TypeVar("T")


@dataclass(slots=True)
class _Pending:
    message: Message
    aggregate_id: str
    aggregate_type: str


class _LazyTransaction:
    """A Transaction that begins on first use, running ``on_open`` inside it first."""

    def __init__(
        self, db: Database, on_open: Callable[[Transaction], Awaitable[None]] | None
    ) -> None:
        self._db = db
        self._on_open = on_open
        self._manager: AbstractAsyncContextManager[Transaction] | None = None
        self._tx: Transaction | None = None

    async def opened(self) -> Transaction:
        if self._tx is None:
            self._manager = self._db.transaction()
            self._tx = await self._manager.__aenter__()
            if self._on_open is not None:
                try:
                    await self._on_open(self._tx)
                except BaseException as error:
                    await self.close(error)  # never leave the write lock held
                    raise
        return self._tx

    async def close(self, error: BaseException | None) -> None:
        if self._manager is None:
            return
        manager, self._manager, self._tx = self._manager, None, None
        if error is None:
            await manager.__aexit__(None, None, None)
        else:
            await manager.__aexit__(type(error), error, error.__traceback__)

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await (await self.opened()).execute(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        return await (await self.opened()).fetchone(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await (await self.opened()).fetchall(sql, params)


class _Emitter:
    """Collects emitted events; writes them to the outbox when the transaction ends."""

    def __init__(self, aggregate_type_of: AggregateTypeOf) -> None:
        self._aggregate_type_of = aggregate_type_of
        self._pending: list[_Pending] = []
        self.emitted: list[Envelope] = []
        self.rows: list[outbox.OutboxRow] = []

    def emit(self, message: Message, *, aggregate_id: str) -> None:
        if not aggregate_id:
            raise ValueError(f"emit({type(message).__name__}): aggregate_id is required")
        # Fails now, in the handler, if not an event; kept for the write (one lookup, not two).
        aggregate_type = self._aggregate_type_of(type(message))
        self._pending.append(_Pending(message, aggregate_id, aggregate_type))

    async def write(
        self, tx: Transaction, envelope_for: Callable[[str, str, str, int], Envelope]
    ) -> None:
        if not self._pending:
            return  # nothing emitted: no trace context to look up either
        traceparent, tracestate = current_trace_headers()
        for pending in self._pending:
            event_type = pending.message.DESCRIPTOR.full_name
            aggregate_type = pending.aggregate_type
            version = await outbox.next_aggregate_version(tx, aggregate_type, pending.aggregate_id)
            envelope = envelope_for(event_type, aggregate_type, pending.aggregate_id, version)
            if traceparent:
                envelope = envelope.with_trace(traceparent, tracestate)
            self.rows.append(
                await outbox.enqueue(tx, envelope, pending.message.SerializeToString())
            )
            self.emitted.append(envelope)
        self._pending.clear()


class _EmitsEvents:
    """``emit`` and what it led to, for both a handler's context and a command's unit of work."""

    _emitter: _Emitter

    @property
    def emitted(self) -> list[Envelope]:
        return self._emitter.emitted

    @property
    def outbox_rows(self) -> list[outbox.OutboxRow]:
        """What the committed transaction wrote to the outbox, for the relay's fast path."""
        return self._emitter.rows

    def emit(self, message: Message, *, aggregate_id: str) -> None:
        """Publish ``message`` once this transaction commits."""
        self._emitter.emit(message, aggregate_id=aggregate_id)


class HandlerContext(_EmitsEvents):
    """What a handler gets besides the event: the transaction, the envelope, ``emit``."""

    def __init__(
        self,
        *,
        service: str,
        consumer: str,
        envelope: Envelope,
        db: Database,
        settings: RuntimeSettings,
        aggregate_type_of: AggregateTypeOf,
    ) -> None:
        self.service = service
        self.consumer = consumer
        self.envelope = envelope
        self.settings = settings
        self._emitter = _Emitter(aggregate_type_of)
        self._tx = _LazyTransaction(db, self._record_in_inbox)

    @property
    def tx(self) -> Transaction:
        return self._tx

    async def call(self, call: Awaitable[T], what: str) -> T:
        """Await an external call (a provider, a gateway) within ``settings.call_timeout``; a
        hung call becomes ``CallTimedOut``, a transient failure that is retried. Call before
        touching ``tx``, so no other handler waits on it."""
        limit = self.settings.call_timeout
        try:
            # asyncio.timeout, not wait_for: no extra task and loop step per call.
            async with asyncio.timeout(limit):
                return await call
        except TimeoutError as exc:
            raise CallTimedOut(f"{what}: no answer within {limit:.1f}s") from exc

    async def _record_in_inbox(self, tx: Transaction) -> None:
        if not await inbox.record_handled(tx, self.consumer, self.envelope.event_id):
            raise AlreadyHandled(self.envelope.event_id)

    async def commit(self, after_open: Callable[[Transaction], Awaitable[None]]) -> None:
        """Finish the unit of work: inbox (if not yet), ``after_open``, outbox, commit."""
        try:
            tx = await self._tx.opened()
            await after_open(tx)
            await self._emitter.write(tx, self._caused_envelope)
        except BaseException as error:
            await self._tx.close(error)
            raise
        await self._tx.close(None)

    async def abort(self, error: BaseException) -> None:
        await self._tx.close(error)

    def _caused_envelope(
        self, event_type: str, aggregate_type: str, aggregate_id: str, version: int
    ) -> Envelope:
        return self.envelope.caused(
            event_type,
            source=self.service,
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            aggregate_version=version,
        )


class UnitOfWork(_EmitsEvents):
    """A command's transaction (e.g. a gRPC ``PlaceOrder``): state and events commit together."""

    def __init__(
        self,
        tx: Transaction,
        *,
        service: str,
        correlation_id: str,
        aggregate_type_of: AggregateTypeOf,
    ) -> None:
        self.tx = tx
        self._service = service
        self._correlation_id = correlation_id
        self._emitter = _Emitter(aggregate_type_of)

    async def write_outbox(self) -> None:
        await self._emitter.write(self.tx, self._root_envelope)

    def _root_envelope(
        self, event_type: str, aggregate_type: str, aggregate_id: str, version: int
    ) -> Envelope:
        return root_envelope(
            event_type,
            source=self._service,
            correlation_id=self._correlation_id,
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            aggregate_version=version,
        )
