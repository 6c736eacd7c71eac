"""Durable pull consumers: fetch in batches, handle, commit, then ack.

One consumer per (service, subscription). Messages of a batch are grouped by aggregate id:
groups run concurrently, each group in stream order, so one aggregate's events stay in order
while different aggregates do not wait for each other.

The failure policy, in order of precedence:
- poison (missing headers, unknown type or version, undecodable body, chain too deep) is
  dead-lettered at once and acked: retrying cannot help and must not block the stream;
- a duplicate (event id already in the inbox) is acked and does nothing;
- on an ordered subscription, a stale version is skipped and a version ahead of a gap is held
  back (nak with delay) up to ``gap_hold_max`` times, then dead-lettered;
- a handler error naks with exponential backoff, and after ``max_deliveries`` is dead-lettered;
  ``PermanentError`` is dead-lettered at once.
The ack is sent only after the commit; a crash in between means a redelivery that the inbox
turns into a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message
from nats.js import api

from choreo import dlq, faults, inbox, subjects
from choreo.envelope import H_SUBJECT, Envelope, EventRegistry, decode
from choreo.errors import PermanentError, PoisonMessage
from choreo.handling import AggregateTypeOf, AlreadyHandled, Handler, HandlerContext
from choreo.outbox import OutboxRow
from choreo.settings import RuntimeSettings
from choreo.store.port import Database, Transaction
from choreo.tracing import consume_span

log = logging.getLogger(__name__)


# After this many empty fetches in a row, ask the server whether messages are waiting.
STALL_CHECK_EVERY = 10


class Ordering(enum.Enum):
    """NONE: the inbox alone (each event applied once, in delivery order).
    STRICT: per-aggregate versions are applied in order; only for a subscription that sees every
    event type of the aggregate, since a partial view has gaps by design."""

    NONE = "none"
    STRICT = "strict"


@dataclass(frozen=True)
class Subscription:
    """Event types one durable consumer receives, and the handler for each."""

    service: str
    handlers: Mapping[type[Message], Handler]
    name: str = ""
    ordering: Ordering = Ordering.NONE

    @property
    def event_types(self) -> list[str]:
        return sorted(cls.DESCRIPTOR.full_name for cls in self.handlers)

    @property
    def durable(self) -> str:
        if self.name:
            return f"{self.service}__{self.name}"
        (only,) = self.event_types
        return subjects.durable_name(self.service, only)

    @property
    def stream(self) -> str:
        contexts = {subjects.context_of(t) for t in self.event_types}
        if len(contexts) != 1:
            raise ValueError(f"subscription {self.durable} spans several streams: {contexts}")
        return subjects.stream_name(contexts.pop())


def one_subscription_per_event(
    service: str, handlers: Mapping[type[Message], Handler]
) -> list[Subscription]:
    return [Subscription(service, {cls: handler}) for cls, handler in handlers.items()]


class Outcome(enum.Enum):
    HANDLED = "handled"
    DUPLICATE = "duplicate"
    STALE = "stale"
    HELD = "held"
    RETRY = "retry"
    DEAD_LETTERED = "dead_lettered"


@dataclass
class ConsumerStats:
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: Outcome) -> None:
        self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1


class Consumer:
    def __init__(
        self,
        *,
        js: Any,
        db: Database,
        subscription: Subscription,
        registry: EventRegistry,
        aggregate_type_of: AggregateTypeOf,
        settings: RuntimeSettings,
        on_commit: Callable[[list[OutboxRow]], None] | None = None,
    ) -> None:
        self._js = js
        self._db = db
        self.subscription = subscription
        self._registry = registry
        self._aggregate_type_of = aggregate_type_of
        self._settings = settings
        self._on_commit: Callable[[list[OutboxRow]], None] = on_commit or (lambda rows: None)
        self._handlers = {cls.DESCRIPTOR.full_name: h for cls, h in subscription.handlers.items()}
        self.stats = ConsumerStats()
        self._sub: Any = None

    def consumer_config(self) -> api.ConsumerConfig:
        types = self.subscription.event_types
        return api.ConsumerConfig(
            durable_name=self.subscription.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=self._settings.ack_wait_s,
            # Unbounded on the server: this consumer decides when to give up (dead letter), so
            # no message is ever silently parked by the broker's own max_deliver.
            max_deliver=-1,
            max_ack_pending=max(1000, self._settings.fetch_batch * 4),
            filter_subject=types[0] if len(types) == 1 else None,
            filter_subjects=types if len(types) > 1 else None,
        )

    async def bind(self) -> None:
        """Create or update the durable consumer and bind a pull subscription to it."""
        # Creating a durable that exists with the same config is a no-op; with an editable
        # difference (e.g. ack_wait) the server updates it.
        await self._js.add_consumer(self.subscription.stream, self.consumer_config())
        self._sub = await self._js.pull_subscribe_bind(
            durable=self.subscription.durable, stream=self.subscription.stream
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Fetch and handle until ``stopping`` is set; survives broker restarts by re-binding."""
        failures = 0
        empty_fetches = 0
        while not stopping.is_set():
            try:
                if self._sub is None:
                    await self.bind()
                msgs = await self._sub.fetch(
                    self._settings.fetch_batch, timeout=self._settings.fetch_timeout_s
                )
                failures = empty_fetches = 0
            except TimeoutError:  # nats raises both its own and asyncio.TimeoutError
                empty_fetches += 1
                if empty_fetches % STALL_CHECK_EVERY == 0 and await self._stalled():
                    log.warning("%s: messages pending but none fetched; re-binding", self.name)
                    await self._drop_subscription()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = min(5.0, 0.1 * 2**failures)
                log.warning("%s: fetch failed (%r); re-binding in %.1fs", self.name, exc, delay)
                await self._drop_subscription()
                await asyncio.sleep(delay)
                continue
            await self.handle_batch(msgs)

    @property
    def name(self) -> str:
        return self.subscription.durable

    async def _stalled(self) -> bool:
        """Messages wait for this consumer, yet fetches come back empty: the subscription is
        wedged (nats.py has had such bugs after a server restart or an orphaned fetch)."""
        try:
            info = await self._js.consumer_info(self.subscription.stream, self.name)
        except Exception:
            return True  # the consumer or the connection is gone: bind again
        return bool(info.num_pending)

    async def _drop_subscription(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            # The connection may be gone already; there is nothing left to clean up then.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def handle_batch(self, msgs: list[Any]) -> None:
        groups: OrderedDict[str, list[Any]] = OrderedDict()
        for msg in msgs:
            key = (msg.headers or {}).get(H_SUBJECT) or f"seq:{msg.reply}"
            groups.setdefault(key, []).append(msg)
        await asyncio.gather(*(self._handle_in_order(group) for group in groups.values()))

    async def _handle_in_order(self, msgs: list[Any]) -> None:
        for msg in msgs:
            try:
                outcome = await self.handle(msg)
            except Exception:
                # Never let one message kill the loop; the broker redelivers after ack_wait.
                log.exception("%s: unexpected failure handling a message", self.name)
                continue
            self.stats.count(outcome)

    async def handle(self, msg: Any) -> Outcome:
        settings = self._settings
        deliveries = msg.metadata.num_delivered
        try:
            envelope, event = decode(msg.headers, msg.data, self._registry)
            if envelope.chain_depth > settings.max_chain_depth:
                raise PoisonMessage(
                    dlq.CHAIN_TOO_DEEP,
                    f"chain depth {envelope.chain_depth} > limit {settings.max_chain_depth}",
                )
            handler = self._handlers.get(envelope.event_type)
            if handler is None:
                raise PoisonMessage(
                    dlq.UNKNOWN_TYPE, f"{envelope.event_type!r} has no handler in {self.name}"
                )
        except PoisonMessage as poison:
            return await self._dead_letter(msg, poison.reason, poison.detail)

        # Cheap pre-checks: a duplicate or a stale/early version needs no handler call.
        verdict = await self._precheck(envelope)
        if verdict is Outcome.DUPLICATE or verdict is Outcome.STALE:
            await msg.ack()
            return verdict
        if verdict is Outcome.HELD:
            if deliveries > settings.gap_hold_max:
                return await self._dead_letter(
                    msg,
                    dlq.GAP_NOT_FILLED,
                    f"version {envelope.aggregate_version} of {envelope.aggregate_type}"
                    f" {envelope.aggregate_id} waited {deliveries} times for its predecessor",
                )
            await msg.nak(delay=settings.gap_hold_delay_s)
            return Outcome.HELD

        if settings.unsafe_ack_before_handling:
            # The classic auto-ack bug, kept as a switch so chaos runs can show they catch it.
            await msg.ack()
            faults.crash_point(faults.AFTER_ACK_BEFORE_COMMIT)

        context = HandlerContext(
            service=self.subscription.service,
            consumer=self.name,
            envelope=envelope,
            db=self._db,
            settings=settings,
            aggregate_type_of=self._aggregate_type_of,
            use_inbox=not settings.unsafe_disable_inbox,
        )
        try:
            with consume_span(self.subscription.service, envelope):
                await handler(context, event)
                await context.commit(lambda tx: self._advance(tx, envelope))
        except AlreadyHandled as exc:
            await context.abort(exc)
            await msg.ack()
            return Outcome.DUPLICATE
        except PermanentError as exc:
            await context.abort(exc)
            return await self._dead_letter(msg, dlq.REJECTED, repr(exc))
        except Exception as exc:
            await context.abort(exc)
            if deliveries >= settings.max_deliveries:
                return await self._dead_letter(
                    msg, dlq.RETRIES_EXHAUSTED, f"after {deliveries} deliveries: {exc!r}"
                )
            delay = settings.backoff(deliveries)
            log.info("%s: %r; retry %d in %.2fs", self.name, exc, deliveries, delay)
            await msg.nak(delay=delay)
            return Outcome.RETRY
        faults.crash_point(faults.AFTER_COMMIT_BEFORE_ACK)
        await msg.ack()
        if context.outbox_rows:
            self._on_commit(context.outbox_rows)
        return Outcome.HANDLED

    async def _precheck(self, envelope: Envelope) -> Outcome | None:
        # Unordered subscriptions skip this read: the inbox insert that opens the handler's
        # transaction catches a duplicate anyway, and duplicates are rare; one round trip to the
        # database per event is not. Ordered ones need the position before running the handler.
        if self.subscription.ordering is not Ordering.STRICT:
            return None
        async with self._db.read() as tx:
            if not self._settings.unsafe_disable_inbox and await inbox.already_handled(
                tx, self.name, envelope.event_id
            ):
                return Outcome.DUPLICATE
            applied = await inbox.position(
                tx, self.name, envelope.aggregate_type, envelope.aggregate_id
            )
        if envelope.aggregate_version <= applied:
            return Outcome.STALE
        if envelope.aggregate_version > applied + 1:
            return Outcome.HELD
        return None

    async def _advance(self, tx: Transaction, envelope: Envelope) -> None:
        if self.subscription.ordering is Ordering.STRICT:
            await inbox.advance(
                tx,
                self.name,
                envelope.aggregate_type,
                envelope.aggregate_id,
                envelope.aggregate_version,
            )

    async def _dead_letter(self, msg: Any, reason: str, detail: str) -> Outcome:
        try:
            await dlq.dead_letter(
                self._js,
                service=self.subscription.service,
                subject=msg.subject,
                headers=msg.headers,
                body=msg.data,
                reason=reason,
                detail=detail,
                stream=msg.metadata.stream,
                stream_seq=msg.metadata.sequence.stream,
                deliveries=msg.metadata.num_delivered,
            )
        except Exception as exc:
            # Not filed, so not acked: the broker will deliver it again and we try again.
            log.warning("%s: dead-lettering failed (%r); will retry", self.name, exc)
            await msg.nak(delay=1.0)
            return Outcome.RETRY
        log.warning("%s: dead letter (%s): %s", self.name, reason, detail)
        await msg.ack()
        return Outcome.DEAD_LETTERED
