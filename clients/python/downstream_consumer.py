"""A downstream team's consumer of one event type: every PaymentCompleted, with its own durable.

    python clients/python/downstream_consumer.py --nats nats://127.0.0.1:4222 [--until ORDER_ID]

Uses only nats-py and the generated code in gen/python (``pip install -e .`` puts it on the
path). Prints one line per payment; with ``--until`` it stops after that order's payment.
See docs/downstream.md.
"""

from __future__ import annotations

import argparse
import asyncio

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from shop.payment.v1 import events_pb2

EVENT_TYPE = "shop.payment.v1.PaymentCompleted"


async def consume(nats_url: str, durable: str, until: str | None) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        f"{EVENT_TYPE}.>",  # every PaymentCompleted, whatever the order
        durable=durable,  # your team's name: it keeps its position across restarts
        stream="SHOP_PAYMENT",
        config=ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,  # or NEW / BY_START_TIME for no history
            ack_wait=30,  # above your slowest handling of one event
            max_deliver=10,  # then the broker stops redelivering: log and alert
        ),
    )
    seen: set[str] = set()  # use your database's unique key on ce-id in production
    try:
        while True:
            try:
                messages = await sub.fetch(64, timeout=5)
            except NatsTimeout:
                continue
            for message in messages:
                headers = message.headers or {}
                if headers.get("ce-type") != EVENT_TYPE:
                    await message.term()  # not what this consumer understands
                    continue
                event_id = headers["ce-id"]  # at least once: the same event may come again
                if event_id not in seen:
                    seen.add(event_id)
                    payment = events_pb2.PaymentCompleted.FromString(message.data)
                    print(
                        f"PaymentCompleted order={payment.order_id} "
                        f"amount={payment.amount.amount_minor} {payment.amount.currency_code} "
                        f"correlation={headers['ce-correlationid']}",
                        flush=True,
                    )
                    if payment.order_id == until:
                        await message.ack()
                        return
                await message.ack()
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--durable", default="billing__shop_payment_v1_PaymentCompleted")
    parser.add_argument("--until", help="stop after the payment of this order")
    args = parser.parse_args()
    asyncio.run(consume(args.nats, args.durable, args.until))


if __name__ == "__main__":
    main()
