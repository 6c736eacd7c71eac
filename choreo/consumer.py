"""Durable pull consumers: pull continuously (choreo.pull), handle in batches, commit, ack.

One consumer per (service, subscription). Messages of a batch are grouped by aggregate id:
groups run concurrently, each group in stream order, so one aggregate's events stay in order
while different aggregates do not wait for each other.

The failure policy, in order of precedence:
- poison (missing headers, unknown type or version, undecodable body, chain too deep) and
  events that break their contracts' ``buf.validate`` rules (``invalid_event``, naming each
  field; see choreo.validation) are dead-lettered at once and acked: retrying cannot help and
  must not block the stream;
- a duplicate (event id already in the inbox) is acked and does nothing;
- on an ordered subscription, a stale version is skipped and a version ahead of a gap is held
  back (nak with a growing delay) for longer than its predecessor's whole retry budget, then
  parked in the dead-letter stream with an alarm;
- a handler error (a timeout included) naks with exponential backoff; after ``max_deliveries``
  attempts (``retries_exhausted``), or at once on ``PermanentError`` (``handler_rejected``),
  the step *gives up*: the subscription's give-up handler for the event type, if it has one,
  compensates and emits the step's failure event in one transaction with the inbox record,
  and the letter is filed; without one the letter carries an alarm for operators. A give-up
  whose compensation fails is tried again on later deliveries under its *own* reason (the
  attempts are not counted again); when even that runs out, the alarm says
  ``compensation_failed`` and why.

Attempts are counted by what happened, not by the server's delivery count: the server counts
every delivery, also those that never reached a handler (a batch-mate of a message that killed
the process, a message handed back at shutdown). A message delivered again that this process
did not hand back itself (``num_delivered > 1``) is a *suspect*: an earlier delivery may have
crashed or hung the process. Suspects take turns, one at a time in the process, each starting
*alone*: no other handler of the process runs for its first ``ALONE_WINDOW_S``, and before it
runs, its attempt journal (``choreo_delivery_attempts``, in the service's database) records
that an alone run started. Only a run that started alone and never reported back counts as a
crash (a suspect still running after its window, waiting on a slow provider say, is journaled
as no longer alone and the process goes on around it), so a crash-looping message is singled
out and given up (``delivery_limit_exceeded``) after ``max_deliveries`` attempts, while its
batch-mates are handled. The journal also keeps failed attempts and a give-up in progress
across restarts, so the reason and the attempt count stay true whoever handles the next
delivery. The server's own ``max_deliver`` is the last bound: a message on its last delivery is
given up, saying so.

The ack is sent only after the commit; a crash in between means a redelivery that the inbox
turns into a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from choreo import checkpoints, dlq, inbox, logs, metrics, subjects, validation
from choreo.envelope import (
    H_CORRELATION_ID,
    H_ID,
    H_SUBJECT,
    Envelope,
    EventRegistry,
    decode,
)
from choreo.errors import CallTimedOut, PermanentError, PoisonMessage
from choreo.handling import (
    AggregateTypeOf,
    AlreadyHandled,
    GaveUp,
    GiveUpHandler,
    Handler,
    HandlerContext,
)
from choreo.outbox import OutboxRow
from choreo.pull import ContinuousPull
from choreo.settings import ConsumerStart, RuntimeSettings
from choreo.store.port import Database, Transaction
from choreo.tracing import consume_span

log = logging.getLogger(__name__)


# The reason of an alarm letter whose give-up handler could not compensate (it kept failing
# past ``give_up_attempts``, or refused): the detail says why the step gave up and why
# compensating failed. choreo.dlq's reasons name why a step gave up; this one, what came after.
COMPENSATION_FAILED = "compensation_failed"

# How long a suspect runs with nothing else running in the process. A message that kills the
# process does so at once (in its handler's own code), well within this; one that is still
# running after it (waiting on a slow provider, say) is no longer run alone, and a crash from
# then on is not blamed on it.
ALONE_WINDOW_S = 1.0

# After this many empty fetches in a row, ask the server whether messages are waiting.
STALL_CHECK_EVERY = 10
# How long one pull request stays open on the server; a lost one is renewed after this.
PULL_EXPIRES_S = 5.0


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
    # Event class -> what to do when its handler gives up (see choreo.handling.GiveUpHandler).
    give_ups: Mapping[type[Message], GiveUpHandler] = field(default_factory=dict)

    # Cached: the consumer reads these on every event.
    @functools.cached_property
    def event_types(self) -> list[str]:
        return sorted(cls.DESCRIPTOR.full_name for cls in self.handlers)

    @functools.cached_property
    def durable(self) -> str:
        if self.name:
            return f"{self.service}__{self.name}"
        (only,) = self.event_types
        return subjects.durable_name(self.service, only)

    @functools.cached_property
    def stream(self) -> str:
        contexts = {subjects.context_of(t) for t in self.event_types}
        if len(contexts) != 1:
            raise ValueError(f"subscription {self.durable} spans several streams: {contexts}")
        return subjects.stream_name(contexts.pop())


@dataclass(frozen=True)
class StartPosition:
    """Where a durable reads its stream from. Chosen once, when the durable is created: after
    that it goes on from where it is, and JetStream refuses to change it anyway."""

    policy: api.DeliverPolicy = api.DeliverPolicy.ALL
    start_seq: int | None = None
    start_time: datetime | None = None

    @classmethod
    def of(cls, config: api.ConsumerConfig) -> StartPosition:
        """The position an existing durable was created with, to be sent back unchanged."""
        policy = api.DeliverPolicy(config.deliver_policy or api.DeliverPolicy.ALL)
        return cls(policy, config.opt_start_seq, config.opt_start_time)

    @classmethod
    def for_new(cls, start: ConsumerStart, now: datetime) -> StartPosition:
        """The position of a durable created at ``now`` (CHOREO_NEW_CONSUMER_START)."""
        if start.kind == "new":
            return cls(api.DeliverPolicy.NEW)
        if start.kind == "since":
            return cls(api.DeliverPolicy.BY_START_TIME, start_time=start.start_time(now))
        return cls()


def one_subscription_per_event(
    service: str,
    handlers: Mapping[type[Message], Handler],
    give_ups: Mapping[type[Message], GiveUpHandler] | None = None,
) -> list[Subscription]:
    give_ups = give_ups or {}
    unknown = set(give_ups) - set(handlers)
    if unknown:
        names = sorted(cls.DESCRIPTOR.full_name for cls in unknown)
        raise ValueError(f"{service}: give-up handlers for events it does not handle: {names}")
    return [
        Subscription(
            service, {cls: handler}, give_ups={cls: give_ups[cls]} if cls in give_ups else {}
        )
        for cls, handler in handlers.items()
    ]


class Outcome(enum.Enum):
    HANDLED = "handled"
    DUPLICATE = "duplicate"
    STALE = "stale"
    HELD = "held"
    RETRY = "retry"
    DEAD_LETTERED = "dead_lettered"
    COMPENSATED = "compensated"  # given up, and the give-up handler emitted the failure event


@dataclass
class ConsumerStats:
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: Outcome) -> None:
        self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1


def _broken_contract(envelope: Envelope, broken: list[validation.EventViolation]) -> str:
    fields = "; ".join(f"{v.path or '(event)'}: {v.description}" for v in broken)
    return f"{envelope.event_type} breaks its contract: {fields}"


class HandlingGate:
    """How the handlers of one process share it. Ordinary messages run side by side
    (``shared``). Suspects take *turns*, one at a time in the whole process; a turn starts
    *alone* (``close``: new shared entrants wait, and the turn waits for those running to
    finish), so a crash then is the suspect's own, and the process opens again (``open``)
    after ``ALONE_WINDOW_S`` at the latest, so a suspect that waits on a slow provider does not
    hold up the rest of the service. Alone turns go first: shared entrants wait while one
    waits, so a suspect is not starved by a busy stream."""

    def __init__(self) -> None:
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()
        self.turns = asyncio.Lock()  # held for a suspect's whole run

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        while not self._open.is_set():
            await self._open.wait()
        self._running += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    async def close(self) -> None:
        """Let no new shared entrant in and wait until those running have finished."""
        self._open.clear()
        await self._idle.wait()

    def open(self) -> None:
        self._open.set()


_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HandlingGate] = (
    weakref.WeakKeyDictionary()
)


async def _still_working_on(msgs: list[Any]) -> None:
    """Reset the ack wait of messages queued behind a suspect, so the broker does not deliver
    them again while they wait their turn (without counting a delivery)."""
    for msg in msgs:
        with contextlib.suppress(Exception):
            await msg.in_progress()


def process_gate() -> HandlingGate:
    """The gate of this process's event loop, shared by all its consumers."""
    loop = asyncio.get_running_loop()
    gate = _GATES.get(loop)
    if gate is None:
        gate = _GATES[loop] = HandlingGate()
    return gate


# The attempt journal: what earlier deliveries of a message did, kept in the service's own
# database so that it outlives a crash and is shared by replicas. A row exists only for a
# message that failed, was given up with its compensation still to do, or is run alone.
ATTEMPTS_TABLE = """CREATE TABLE IF NOT EXISTS choreo_delivery_attempts (
    consumer TEXT NOT NULL,
    stream_seq BIGINT NOT NULL,
    failures INTEGER NOT NULL,
    crashes INTEGER NOT NULL,
    running INTEGER NOT NULL,
    giving_up INTEGER NOT NULL,
    compensation_failures INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    last_delivery INTEGER NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (consumer, stream_seq))"""
_ATTEMPT_COLUMNS = (
    "failures, crashes, running, giving_up, compensation_failures, reason, detail, last_delivery"
)
_SAVE_ATTEMPTS = (
    "INSERT INTO choreo_delivery_attempts (consumer, stream_seq, failures, crashes, running,"
    " giving_up, compensation_failures, reason, detail, last_delivery, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (consumer, stream_seq) DO UPDATE SET"
    " failures = excluded.failures, crashes = excluded.crashes, running = excluded.running,"
    " giving_up = excluded.giving_up, compensation_failures = excluded.compensation_failures,"
    " reason = excluded.reason, detail = excluded.detail,"
    " last_delivery = excluded.last_delivery, updated_at = excluded.updated_at"
)
# Rows of messages finished elsewhere (a replica acked it, a crash after the ack) are dropped
# after the longest a stream keeps a message.
ATTEMPTS_KEPT_S = 8 * 86400.0


@dataclass
class Tries:
    """What earlier deliveries of one message did (see the module's docstring)."""

    failures: int = 0  # handler runs that failed (an error, a timeout)
    crashes: int = 0  # runs that started alone and never reported back
    running: bool = False  # an alone run has started and not reported back (yet)
    giving_up: bool = False  # the step gave up; its compensation is still to do
    compensation_failures: int = 0
    reason: str = ""  # the give-up's reason, or the last failure
    detail: str = ""
    last_delivery: int = 0  # the delivery this process last handed back (a nak)
    journaled: bool = False  # a journal row may exist

    @property
    def attempts(self) -> int:
        """Handler runs that ended without success so far."""
        return self.failures + self.crashes


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
        on_handled: Callable[[str, float], None] | None = None,
    ) -> None:
        self._js = js
        self._db = db
        self.subscription = subscription
        self._registry = registry
        self._aggregate_type_of = aggregate_type_of
        self._settings = settings
        self._on_commit: Callable[[list[OutboxRow]], None] = on_commit or (lambda rows: None)
        self._handlers = {cls.DESCRIPTOR.full_name: h for cls, h in subscription.handlers.items()}
        self._give_ups = {cls.DESCRIPTOR.full_name: g for cls, g in subscription.give_ups.items()}
        # Holds per stream sequence of the messages held back right now: a hold is a delivery
        # too, and must count neither as an attempt nor towards the next hold's delay twice.
        # In memory only: after a restart a held message starts its holds again, and the
        # server's max_deliver (which covers every hold) still bounds it.
        self._holds: dict[int, int] = {}
        # Per stream sequence: what earlier deliveries did, for messages that failed, are
        # being given up or run alone (see Tries); mirrored in the attempt journal.
        self._tries: dict[int, Tries] = {}
        self._journal_ready = False
        self.stats = ConsumerStats()
        self._sub: Any = None
        # Metrics: (consumer name, seconds) for every event handled and committed.
        self._on_handled = on_handled
        # When the run loop last finished a fetch (with messages or empty): health tells a
        # stalled consumer by this not moving while the connection is up.
        self.last_cycle = time.monotonic()

    def consumer_config(self, start: StartPosition | None = None) -> api.ConsumerConfig:
        filters = [subjects.event_type_filter(t) for t in self.subscription.event_types]
        start = start or StartPosition()
        return api.ConsumerConfig(
            durable_name=self.subscription.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=start.policy,
            opt_start_seq=start.start_seq,
            opt_start_time=start.start_time,
            ack_wait=self._settings.ack_wait_s,
            # This consumer decides when to give up, before the server would: the bound is above
            # every attempt and hold it may ask for. It matters only when a message keeps
            # killing or hanging the process before it can give up (see ``handle``).
            max_deliver=self._settings.server_max_deliver(
                self.subscription.ordering is Ordering.STRICT
            ),
            max_ack_pending=max(1000, self._settings.fetch_batch * 4),
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
        )

    async def bind(self) -> None:
        """Create or update the durable consumer and bind a pull subscription to it."""
        await self._ensure_durable()
        await self._prepare_journal()
        pull = ContinuousPull(
            self._js._nc,
            self._js._prefix,
            self.subscription.stream,
            self.subscription.durable,
            batch=self._settings.fetch_batch,
            expires_s=PULL_EXPIRES_S,
        )
        await pull.start()
        self._sub = pull

    async def run(self, stopping: asyncio.Event) -> None:
        """Fetch and handle until ``stopping`` is set; survives broker restarts by re-binding."""
        failures = 0
        empty_fetches = 0
        while not stopping.is_set():
            try:
                if self._sub is None:
                    await self.bind()
                msgs = await self._sub.next_batch(
                    self._settings.fetch_batch, timeout=self._settings.fetch_timeout_s
                )
                failures = empty_fetches = 0
            except TimeoutError:  # nats raises both its own and asyncio.TimeoutError
                self.last_cycle = time.monotonic()
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
            self.last_cycle = time.monotonic()
        await self._drop_subscription()  # hands back what arrived but was not handled

    async def _ensure_durable(self) -> None:
        """Create the durable where CHOREO_NEW_CONSUMER_START says, or update the one that
        exists without moving it."""
        stream = self.subscription.stream
        existing = await self._durable_config()
        if existing is None:
            start = StartPosition.for_new(self._settings.consumer_start, datetime.now(UTC))
            try:
                info = await self._js.add_consumer(stream, self.consumer_config(start))
            except APIError:
                # A replica created it between our look and our add, from another start time
                # (since:<duration> counts from each one's clock), which the server refuses as
                # an update. Theirs stands.
                existing = await self._durable_config()
                if existing is None:
                    raise
            else:
                self._announce_stored(info, start)
                return
        # Its editable settings (ack_wait, max_deliver, ...) follow this process's; where it
        # starts is sent back as it is, so a durable that has been reading goes on from where
        # it is, whatever CHOREO_NEW_CONSUMER_START says now (the server would refuse a change).
        await self._js.add_consumer(stream, self.consumer_config(StartPosition.of(existing)))

    async def _durable_config(self) -> api.ConsumerConfig | None:
        try:
            info = await self._js.consumer_info(self.subscription.stream, self.name)
        except NotFoundError:
            return None
        config: api.ConsumerConfig = info.config
        return config

    def _announce_stored(self, info: api.ConsumerInfo, start: StartPosition) -> None:
        """One line when a new durable has stored events to go through before new ones: a
        service added to a running system may replay days of history, and whoever runs it
        should see that, and which setting chose it."""
        stored = int(info.num_pending or 0)
        if not stored:
            return
        if start.start_time is None:
            origin, other = "the start of the stream", "new or since:<time> to start later"
        else:
            origin, other = start.start_time.isoformat(), "all, new or another since:<time>"
        log.info(
            "%s: created on %s from %s: it will receive %d stored event(s) of its types before"
            " new ones (CHOREO_NEW_CONSUMER_START=%s; %s)",
            self.name,
            self.subscription.stream,
            origin,
            stored,
            self._settings.new_consumer_start,
            other,
        )

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
                await sub.stop()

    async def handle_batch(self, msgs: list[Any]) -> None:
        groups: OrderedDict[str, list[Any]] = OrderedDict()
        for msg in msgs:
            key = (msg.headers or {}).get(H_SUBJECT) or f"seq:{msg.reply}"
            groups.setdefault(key, []).append(msg)
        # A group with a suspect is handled after the others, one message at a time with
        # nothing else running in the process (its aggregate's order kept).
        suspected = [key for key, group in groups.items() if any(map(self._suspect, group))]
        isolated = [groups.pop(key) for key in suspected]
        gate = process_gate()
        if groups:
            async with gate.shared():
                if len(groups) == 1:  # the usual case below saturation: no task, no gather
                    (only,) = groups.values()
                    await self._handle_in_order(only)
                else:
                    await asyncio.gather(
                        *(self._handle_in_order(group) for group in groups.values())
                    )
        for index, group in enumerate(isolated):
            for position, msg in enumerate(group):
                if self._suspect(msg):
                    waiting = group[position + 1 :] + [m for g in isolated[index + 1 :] for m in g]
                    await self._handle_alone(msg, waiting)
                else:  # behind a suspect of its aggregate: in order, as usual
                    async with gate.shared():
                        await self._handle_in_order([msg])

    async def _handle_alone(self, msg: Any, waiting: list[Any]) -> None:
        """Run a suspect in its turn: alone for up to ``ALONE_WINDOW_S`` (journaled as such
        before it starts), then alongside the rest of the process until it ends."""
        gate = process_gate()
        await _still_working_on(waiting)
        async with gate.turns:
            await _still_working_on(waiting)  # the turn may have been long in coming
            await gate.close()
            task = asyncio.ensure_future(self._handle_in_order([msg], alone=True))
            try:
                done, _ = await asyncio.wait({task}, timeout=ALONE_WINDOW_S)
                if not done:
                    await self._no_longer_alone(msg.metadata.sequence.stream)
            except BaseException:
                task.cancel()
                raise
            finally:
                gate.open()
            await task

    async def _no_longer_alone(self, seq: int) -> None:
        """The suspect outlived its window: a crash from now on is not its own."""
        tries = self._tries.get(seq)
        if tries is None or not tries.running:
            return
        tries.running = False
        try:
            await self._save(seq, tries)
        except Exception as exc:  # then a crash now would be blamed on it: noted, not fatal
            log.warning("%s: could not journal %d as no longer alone (%r)", self.name, seq, exc)

    def _suspect(self, msg: Any) -> bool:
        """Delivered before, and not handed back by this process: an earlier delivery may have
        crashed or hung the process (or another replica's, or it was handed back at a stop)."""
        deliveries = msg.metadata.num_delivered
        if deliveries <= 1:
            return False
        tries = self._tries.get(msg.metadata.sequence.stream)
        return tries is None or tries.last_delivery != deliveries - 1

    async def _handle_in_order(self, msgs: list[Any], *, alone: bool = False) -> None:
        for msg in msgs:
            try:
                outcome = await self.handle(msg, alone=alone)
            except Exception:
                # Never let one message kill the loop; the broker redelivers after ack_wait.
                log.exception("%s: unexpected failure handling a message", self.name)
                continue
            self.stats.count(outcome)

    async def handle(self, msg: Any, *, alone: bool = False) -> Outcome:
        started = time.perf_counter()
        headers = msg.headers or {}
        # Every log line written while this event is handled (the handler's, the runtime's
        # retries and give-ups) names the saga and the event, with or without a tracer.
        with logs.bound(order_id=headers.get(H_CORRELATION_ID, ""), event_id=headers.get(H_ID, "")):
            outcome = await self._handle(msg, alone)
        if outcome is Outcome.HANDLED and self._on_handled is not None:
            self._on_handled(self.name, time.perf_counter() - started)
        if outcome is not Outcome.HELD and outcome is not Outcome.RETRY:
            seq = msg.metadata.sequence.stream
            self._holds.pop(seq, None)
            await self._forget(seq, msg.metadata.num_delivered)
        return outcome

    async def _handle(self, msg: Any, alone: bool) -> Outcome:
        settings = self._settings
        deliveries = msg.metadata.num_delivered
        seq = msg.metadata.sequence.stream
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
            # The bus is a door too: the contracts' rules hold for events from any producer.
            # The handler never sees an invalid event; a step with a give-up handler gives up
            # on it at once (below), any other files it as it is.
            broken = validation.event_violations(event)
            if broken and envelope.event_type not in self._give_ups:
                raise PoisonMessage(validation.INVALID_EVENT, _broken_contract(envelope, broken))
        except PoisonMessage as poison:
            return await self._dead_letter(msg, poison.reason, poison.detail)

        # Cheap pre-checks: a duplicate or a stale/early version needs no handler call.
        verdict = await self._precheck(envelope)
        if verdict is Outcome.DUPLICATE or verdict is Outcome.STALE:
            await msg.ack()
            return verdict
        if verdict is Outcome.HELD:
            holds = self._holds.get(seq, 0) + 1
            if holds > settings.gap_holds:
                # Longer than the predecessor could still be retried: it is lost (or parked
                # itself). Parked with an alarm; replaying it once the gap is filled works.
                return await self._dead_letter(
                    msg,
                    dlq.GAP_NOT_FILLED,
                    f"version {envelope.aggregate_version} of {envelope.aggregate_type}"
                    f" {envelope.aggregate_id} waited {holds - 1} times for its predecessor",
                    alarm=True,
                )
            self._holds[seq] = holds
            self._tries.setdefault(seq, Tries()).last_delivery = deliveries
            await msg.nak(delay=settings.gap_hold_delay(holds))
            return Outcome.HELD

        tries = await self._tries_of(seq, deliveries)
        if tries.running:
            # It was run alone and never reported back: it killed or hung the process.
            tries.running = False
            if tries.giving_up:
                tries.compensation_failures += 1
            else:
                tries.crashes += 1
        last = deliveries >= self._server_max_deliver
        crashed_out = tries.crashes > 0 and tries.attempts >= settings.max_deliveries
        if (tries.giving_up or crashed_out or last) and await self._handled(envelope):
            # Handled long ago, only its acks were lost (e.g. the broker was frozen, or the
            # process died between commit and ack): a duplicate, not a message to give up on.
            await msg.ack()
            return Outcome.DUPLICATE
        if tries.giving_up:
            # The step gave up on an earlier delivery and its compensation is still to do:
            # the same give-up, under its own reason, without running the handler again.
            why = GaveUp(tries.reason, tries.detail, deliveries, tries.attempts)
            return await self._give_up(msg, envelope, event, why, tries, alone)
        if crashed_out or last:
            return await self._give_up(
                msg, envelope, event, self._no_outcome(tries, deliveries, last), tries, alone
            )
        if broken:
            # Like a PermanentError, before the handler could take a charge or book anything.
            detail = f"{validation.INVALID_EVENT}: {_broken_contract(envelope, broken)}"
            why = GaveUp(dlq.REJECTED, detail, deliveries, tries.attempts)
            return await self._give_up(msg, envelope, event, why, tries, alone)

        await checkpoints.reached(checkpoints.BEFORE_HANDLING, msg)
        attempt = tries.attempts + 1
        if alone:
            tries.running = True
            await self._save(seq, tries)  # on record before it runs: it may not come back
        context = self._context(envelope)
        try:
            with consume_span(self.subscription.service, envelope):
                await checkpoints.reached(checkpoints.IN_HANDLER, event)
                await self._within_timeout(handler(context, event))
                await context.commit(lambda tx: self._advance(tx, envelope))
        except AlreadyHandled as exc:
            await context.abort(exc)
            await msg.ack()
            return Outcome.DUPLICATE
        except PermanentError as exc:
            await context.abort(exc)
            tries.running = False
            return await self._give_up(
                msg,
                envelope,
                event,
                GaveUp(dlq.REJECTED, self._attempted(repr(exc), tries), deliveries, attempt),
                tries,
                alone,
            )
        except Exception as exc:
            await context.abort(exc)
            tries.running = False
            tries.failures += 1
            tries.reason, tries.detail = dlq.RETRIES_EXHAUSTED, repr(exc)
            if attempt >= settings.max_deliveries:
                detail = self._attempted(f"after {attempt} attempts: {exc!r}", tries)
                return await self._give_up(
                    msg,
                    envelope,
                    event,
                    GaveUp(dlq.RETRIES_EXHAUSTED, detail, deliveries, attempt),
                    tries,
                    alone,
                )
            delay = settings.backoff(attempt)
            log.info("%s: %r; retry %d in %.2fs", self.name, exc, attempt, delay)
            tries.last_delivery = deliveries
            await self._save(seq, tries)
            await msg.nak(delay=delay)
            return Outcome.RETRY
        await checkpoints.reached(checkpoints.AFTER_COMMIT_BEFORE_ACK)
        # The relay first, then the ack: the relay's task is then woken before nats-py's
        # flusher, so its publish and this ack leave in one socket write, not two.
        if context.outbox_rows:
            self._on_commit(context.outbox_rows)
        await msg.ack()
        return Outcome.HANDLED

    @staticmethod
    def _attempted(detail: str, tries: Tries) -> str:
        if not tries.crashes:
            return detail
        return (
            f"{detail} ({tries.crashes} earlier run(s) handled alone ended without an outcome:"
            " the process crashed or hung)"
        )

    def _no_outcome(self, tries: Tries, deliveries: int, last: bool) -> GaveUp:
        """Why a message is given up without running its handler again."""
        if last:
            detail = (
                f"delivered {deliveries} times, the broker's limit for this consumer;"
                f" {tries.failures} attempt(s) failed, {tries.crashes} ended without an"
                " outcome, and the other deliveries never reached the handler (handed back,"
                " or in flight when the process stopped)"
            )
        else:
            detail = (
                f"handled alone {tries.crashes} time(s), each time without an outcome: the"
                f" process crashed or hung while running it (delivered {deliveries} times)"
            )
        if tries.failures:
            detail += f"; {tries.failures} other attempt(s) failed, last: {tries.detail}"
        return GaveUp(dlq.DELIVERY_LIMIT, detail, deliveries, tries.attempts)

    def _context(self, envelope: Envelope) -> HandlerContext:
        return HandlerContext(
            service=self.subscription.service,
            consumer=self.name,
            envelope=envelope,
            db=self._db,
            settings=self._settings,
            aggregate_type_of=self._aggregate_type_of,
        )

    async def _within_timeout(self, call: Awaitable[None]) -> None:
        """Run a handler, cancelling it after the handler timeout (a transient failure). Only
        the handler's own code is timed, never the commit after it."""
        limit = self._settings.handler_timeout
        try:
            # asyncio.timeout, not wait_for: no extra task and loop step per handled event.
            async with asyncio.timeout(limit):
                await call
        except TimeoutError as exc:
            raise CallTimedOut(f"handler timed out after {limit:.1f}s") from exc

    async def _give_up(
        self, msg: Any, envelope: Envelope, event: Any, why: GaveUp, tries: Tries, alone: bool
    ) -> Outcome:
        """Stop trying: compensate through the give-up handler if the step has one, else raise
        an alarm. Either way the message is recorded in the dead-letter stream."""
        give_up = self._give_ups.get(envelope.event_type)
        if give_up is None:
            return await self._dead_letter(msg, why.reason, why.detail, alarm=True)
        seq = msg.metadata.sequence.stream
        tries.giving_up, tries.reason, tries.detail = True, why.reason, why.detail
        broken = validation.event_violations(event)
        if broken:
            # The give-up handler records and passes on what it did: never an invalid value
            # (Postgres refuses a NUL; the failure event would be refused downstream).
            event = validation.without_invalid_fields(event, broken)
        if alone:
            tries.running = True
            await self._save(seq, tries)
        context = self._context(envelope)
        try:
            with consume_span(self.subscription.service, envelope):
                await self._within_timeout(give_up(context, event, why))
                await context.commit(lambda tx: self._advance(tx, envelope))
        except AlreadyHandled as exc:
            await context.abort(exc)
            await msg.ack()
            return Outcome.DUPLICATE
        except PermanentError as exc:
            # Even the compensation cannot be done (e.g. the event itself is unusable).
            await context.abort(exc)
            detail = f"{why.reason}: {why.detail}; compensating was refused: {exc!r}"
            return await self._dead_letter(msg, COMPENSATION_FAILED, detail, alarm=True)
        except Exception as exc:
            # E.g. the provider is still down: try again later. The next delivery comes
            # straight back here, under the same reason, without running the handler.
            await context.abort(exc)
            tries.running = False
            tries.compensation_failures += 1
            failed = tries.compensation_failures
            if failed >= self._settings.give_up_attempts or why.deliveries >= (
                self._server_max_deliver
            ):
                # Out of compensation attempts too: an operator must look (and the saga
                # deadline cancels the order meanwhile). Filed before the server stops
                # delivering, so the message is never silently parked by the broker.
                detail = (
                    f"{why.reason}: {why.detail}; compensating failed {failed} time(s),"
                    f" last: {exc!r}"
                )
                return await self._dead_letter(msg, COMPENSATION_FAILED, detail, alarm=True)
            delay = self._settings.backoff(self._settings.max_deliveries)
            log.error(
                "%s: giving up on %s (%s) failed %d time(s) (%r); again in %.1fs",
                self.name,
                envelope.event_id,
                why.reason,
                failed,
                exc,
                delay,
            )
            tries.last_delivery = why.deliveries
            await self._save(seq, tries)
            await msg.nak(delay=delay)
            return Outcome.RETRY
        if context.outbox_rows:
            self._on_commit(context.outbox_rows)
        detail = why.detail
        if tries.compensation_failures:
            detail += f"; compensated at try {tries.compensation_failures + 1}"
        # On record after the commit. Should filing fail, the message comes back, the inbox
        # has it, and it is acked as a duplicate: the compensation stands, the record is lost
        # (the failure event in the stream still tells the story).
        if not await self._file(msg, why.reason, detail, compensated=True):
            return Outcome.RETRY
        log.warning(
            "%s: gave up on %s %s (%s) and compensated: %s",
            self.name,
            envelope.event_type,
            envelope.event_id,
            why.reason,
            detail,
        )
        await msg.ack()
        return Outcome.COMPENSATED

    # --- the attempt journal ------------------------------------------------------------

    @functools.cached_property
    def _server_max_deliver(self) -> int:
        return self._settings.server_max_deliver(self.subscription.ordering is Ordering.STRICT)

    async def _prepare_journal(self) -> None:
        if self._journal_ready:
            return
        for attempt in range(3):
            try:
                async with self._db.transaction() as tx:
                    await tx.execute(ATTEMPTS_TABLE)
                    await tx.execute(
                        "DELETE FROM choreo_delivery_attempts WHERE updated_at < ?",
                        (time.time() - ATTEMPTS_KEPT_S,),
                    )
                break
            except Exception:
                # Replicas creating the table at once can clash on Postgres: one wins.
                if attempt == 2:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))
        self._journal_ready = True

    async def _tries_of(self, seq: int, deliveries: int) -> Tries:
        """What earlier deliveries did: this process's memory, else (for a message delivered
        before) the journal, else nothing yet."""
        tries = self._tries.get(seq)
        if tries is not None and tries.last_delivery == deliveries - 1:
            return tries
        if deliveries > 1:
            await self._prepare_journal()
            async with self._db.read() as tx:
                row = await tx.fetchone(
                    f"SELECT {_ATTEMPT_COLUMNS} FROM choreo_delivery_attempts"
                    " WHERE consumer = ? AND stream_seq = ?",
                    (self.name, seq),
                )
            if row is not None:
                failures, crashes, running, giving_up, compensations, reason, detail, last = row
                tries = Tries(
                    failures=int(failures),
                    crashes=int(crashes),
                    running=bool(running),
                    giving_up=bool(giving_up),
                    compensation_failures=int(compensations),
                    reason=str(reason),
                    detail=str(detail),
                    last_delivery=int(last),
                    journaled=True,
                )
        if tries is None:
            tries = Tries()
        self._tries[seq] = tries
        return tries

    async def _save(self, seq: int, tries: Tries) -> None:
        self._tries[seq] = tries
        await self._prepare_journal()
        async with self._db.transaction() as tx:
            await tx.execute(
                _SAVE_ATTEMPTS,
                (
                    self.name,
                    seq,
                    tries.failures,
                    tries.crashes,
                    int(tries.running),
                    int(tries.giving_up),
                    tries.compensation_failures,
                    tries.reason,
                    tries.detail[:1000],
                    tries.last_delivery,
                    time.time(),
                ),
            )
        tries.journaled = True

    async def _forget(self, seq: int, deliveries: int) -> None:
        """The message reached its outcome: drop what was kept about it (a message delivered
        once, the usual case, has nothing kept)."""
        tries = self._tries.pop(seq, None)
        if (tries is None or not tries.journaled) and deliveries <= 1:
            return
        try:
            await self._prepare_journal()
            async with self._db.transaction() as tx:
                await tx.execute(
                    "DELETE FROM choreo_delivery_attempts WHERE consumer = ? AND stream_seq = ?",
                    (self.name, seq),
                )
        except Exception as exc:  # a row left behind is pruned by age; the outcome stands
            log.warning("%s: could not clear the attempts of %d (%r)", self.name, seq, exc)

    async def _handled(self, envelope: Envelope) -> bool:
        async with self._db.read() as tx:
            return await inbox.already_handled(tx, self.name, envelope.event_id)

    async def _precheck(self, envelope: Envelope) -> Outcome | None:
        # Unordered subscriptions skip this read: the inbox insert that opens the handler's
        # transaction catches a duplicate anyway, and duplicates are rare; one round trip to the
        # database per event is not. Ordered ones need the position before running the handler.
        if self.subscription.ordering is not Ordering.STRICT:
            return None
        async with self._db.read() as tx:
            if await inbox.already_handled(tx, self.name, envelope.event_id):
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

    async def _dead_letter(
        self, msg: Any, reason: str, detail: str, *, alarm: bool = False
    ) -> Outcome:
        if not await self._file(msg, reason, detail, alarm=alarm):
            return Outcome.RETRY
        await msg.ack()
        return Outcome.DEAD_LETTERED

    async def _file(
        self,
        msg: Any,
        reason: str,
        detail: str,
        *,
        alarm: bool = False,
        compensated: bool = False,
    ) -> bool:
        """File the letter; False (and the message naked) when that failed."""
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
                alarm=alarm,
                compensated=compensated,
            )
        except Exception as exc:
            # Not filed, so not acked: the broker will deliver it again and we try again.
            log.warning("%s: dead-lettering failed (%r); will retry", self.name, exc)
            await msg.nak(delay=1.0)
            return False
        if alarm:
            # Nothing undoes this step by itself: an operator has to look (choreo dlq list).
            # Counted (choreo_alarms_total, `choreo status`) and logged without rate limit,
            # so every alarmed order is named somewhere an operator looks.
            order_id = (msg.headers or {}).get(H_CORRELATION_ID, "")
            metrics.record_alarm(self.subscription.service, reason, order_id)
            log.error(
                "%s: ALARM dead letter (%s) order %s, %s: %s",
                self.name,
                reason,
                order_id or "?",
                msg.subject,
                detail,
                extra={logs.ALARM: True},
            )
        else:
            log.warning("%s: dead letter (%s): %s", self.name, reason, detail)
        return True
