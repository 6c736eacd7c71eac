"""The raw limit: a no-logic replica of the saga's choreography, for the benchmark.

One process per service, with the same durable pull subscriptions as the real service (one per
trigger event, on the same streams with the same settings). For each message it publishes what
the real service would emit on the happy path — same subjects, same header set, bodies of the
same size — and acks after the publish. No decoding, storage, tracing or logic: what is left is
the cost of the broker, the client library and the hops, which is what a saga cannot beat.

    python -m services.rawchain SERVICE --nats-url nats://127.0.0.1:4222
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import uuid
from typing import Any

import nats
import nats.errors
from nats.js import api

from choreo import contracts, subjects
from choreo.envelope import H_CAUSATION_ID, H_ID, H_MSG_ID, H_SOURCE, H_TYPE

# Body sizes of each event on the happy path, as the real services serialise them (measured
# from a demo run's streams, rounded up): the raw chain sends as many bytes as the saga.
BODY_SIZES = {
    "choreo.order.v1.OrderCreated": 190,
    "choreo.inventory.v1.InventoryReserved": 230,
    "choreo.payment.v1.PaymentCompleted": 200,
    "choreo.order.v1.OrderConfirmed": 80,
    "choreo.shipping.v1.ShipmentCreated": 170,
    "choreo.order.v1.OrderShipped": 110,
    "choreo.inventory.v1.InventoryShipped": 150,
    "choreo.notification.v1.NotificationSent": 190,
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


async def relay_one_trigger(
    js: Any, service: str, trigger: str, emit: str | None, stopping: asyncio.Event
) -> None:
    durable = "raw_" + subjects.durable_name(service, trigger)
    stream = subjects.stream_name(subjects.context_of(trigger))
    await js.add_consumer(
        stream,
        api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            filter_subject=trigger,
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
        if emit is not None:
            futures = []
            for msg in msgs:
                headers = dict(msg.headers or {})
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
                futures.append(await js.publish_async(emit, body, headers=headers))
            await asyncio.gather(*futures)
        for msg in msgs:
            await msg.ack()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("service")
    parser.add_argument("--nats-url", required=True)
    args = parser.parse_args()
    nc = await nats.connect(args.nats_url)
    js = nc.jetstream()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await asyncio.gather(
        *(
            relay_one_trigger(js, args.service, trigger, emit, stopping)
            for trigger, emit in happy_reactions(args.service).items()
        )
    )
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
