"""The raw limit: a no-logic replica of the saga's choreography, for the benchmark.

One process per service, with the same durable pull subscriptions as the real service (one per
trigger event, on the same streams with the same settings). For each message it publishes what
the real service would emit on the happy path — same subjects, same header set, bodies of the
same size — and acks after the publish. No decoding, storage, tracing or logic: what is left is
the cost of the broker, the client library and the hops, which is what a saga cannot beat.

With ``--durable-db FILE`` it adds only what exactly-once effects cannot do without, the way the
runtime does it: for each message the event id in the inbox and the emitted event in the
outbox (the runtime's own tables, WAL, ``synchronous=NORMAL``), a savepoint per message and one
transaction per fetched batch, as the runtime's group commit does; the published rows are
deleted in one statement per batch. Still no decoding, state or logic:
the gap between this line and the plain one is the price of durability, and the gap between
it and the saga is what choreo's runtime and the services' logic cost.

    python -m tools.rawchain SERVICE --nats-url nats://127.0.0.1:4222 [--durable-db FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
import time
import uuid
from typing import Any

import nats
import nats.errors
from nats.js import api

from choreo import contracts, inbox, outbox, subjects
from choreo.envelope import H_CAUSATION_ID, H_CORRELATION_ID, H_ID, H_MSG_ID, H_SOURCE, H_TYPE
from choreo.store.schema import runtime_schema

# Body sizes of each event on the happy path, as the real services serialise them (measured
# from a demo run's streams, rounded up): the raw chain sends as many bytes as the saga.
BODY_SIZES = {
    "shop.order.v1.OrderCreated": 190,
    "shop.inventory.v1.InventoryReserved": 230,
    "shop.payment.v1.PaymentCompleted": 200,
    "shop.order.v1.OrderConfirmed": 80,
    "shop.shipping.v1.ShipmentCreated": 170,
    "shop.order.v1.OrderShipped": 110,
    "shop.inventory.v1.InventoryShipped": 150,
    "shop.notification.v1.NotificationSent": 190,
}


def happy_reactions(service: str) -> dict[str, str | None]:
    """trigger -> the event the service emits on the happy path (None: it only records).

    Compensation triggers are subscribed too (the real service has those consumers, idle on
    the happy path); what they would emit never matters since nothing triggers them.
    """
    reactions: dict[str, str | None] = {}
    for edge in contracts.choreography():
        if edge.service == service:
            happy = [e for e in edge.emits if e in BODY_SIZES]
            reactions[edge.trigger] = happy[0] if happy else (edge.emits or (None,))[0]
    return reactions


Emitted = tuple[str, str, dict[str, str], bytes]  # event id, subject, headers, body


class DurableLog:
    """The runtime's inbox and outbox tables in one SQLite file, written synchronously."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for statement in runtime_schema("sqlite"):
            self._db.execute(statement)

    def record(self, consumer: str, handled: list[tuple[str, Emitted | None]]) -> None:
        """A fetched batch the way the runtime's group commit writes it: one transaction, a
        savepoint per message with its inbox row and the outbox row of what it emits."""
        self._db.execute("BEGIN IMMEDIATE")
        for event_id, emitted in handled:
            self._db.execute("SAVEPOINT unit")
            self._db.execute(inbox.RECORD_HANDLED_SQL, (consumer, event_id, time.time()))
            if emitted is not None:
                out_id, subject, headers, body = emitted
                self._db.execute(
                    outbox.ENQUEUE_SQL, (out_id, subject, json.dumps(headers), body, time.time())
                )
            self._db.execute("RELEASE unit")
        self._db.execute("COMMIT")

    def published(self, event_ids: list[str]) -> None:
        if event_ids:
            marks = ", ".join("?" * len(event_ids))
            self._db.execute(f"DELETE FROM choreo_outbox WHERE event_id IN ({marks})", event_ids)


async def relay_one_trigger(
    js: Any,
    service: str,
    trigger: str,
    emit: str | None,
    stopping: asyncio.Event,
    durable_log: DurableLog | None,
) -> None:
    durable = "raw_" + subjects.durable_name(service, trigger)
    stream = subjects.stream_name(subjects.context_of(trigger))
    await js.add_consumer(
        stream,
        api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            filter_subject=subjects.event_type_filter(trigger),
            max_ack_pending=1000,
            ack_wait=30,
        ),
    )
    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    body = b"\x00" * BODY_SIZES.get(emit or "", 0)
    while not stopping.is_set():
        try:
            msgs = await sub.fetch(64, timeout=0.5)
        except TimeoutError:  # nats raises both its own and asyncio.TimeoutError
            continue
        emitted: list[tuple[str, str, dict[str, str]]] = []
        handled: list[tuple[str, Emitted | None]] = []
        for msg in msgs:
            headers = dict(msg.headers or {})
            if emit is not None:
                event_id = str(uuid.uuid4())
                headers.update(
                    {
                        H_MSG_ID: event_id,
                        H_ID: event_id,
                        H_TYPE: emit,
                        H_SOURCE: service,
                        H_CAUSATION_ID: headers.get(H_ID, ""),
                    }
                )
                subject = subjects.event_subject(emit, headers.get(H_CORRELATION_ID, ""))
                emitted.append((event_id, subject, headers))
            row = (event_id, subject, headers, body) if emit is not None else None
            handled.append(((msg.headers or {}).get(H_ID, ""), row))
        if durable_log is not None:
            durable_log.record(durable, handled)
        if emitted:
            futures = [
                await js.publish_async(subject, body, headers=headers)
                for _, subject, headers in emitted
            ]
            await asyncio.gather(*futures)
            if durable_log is not None:
                durable_log.published([event_id for event_id, _, _ in emitted])
        for msg in msgs:
            await msg.ack()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("service")
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--durable-db", help="add the inbox and outbox in this SQLite file")
    args = parser.parse_args()
    durable_log = DurableLog(args.durable_db) if args.durable_db else None
    nc = await nats.connect(args.nats_url)
    js = nc.jetstream()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await asyncio.gather(
        *(
            relay_one_trigger(js, args.service, trigger, emit, stopping, durable_log)
            for trigger, emit in happy_reactions(args.service).items()
        )
    )
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
