"""Hello, choreo: greets the customer of every new order, once, and says so on the bus."""

from __future__ import annotations

import logging

from acme.hello.v1 import hello_pb2
from google.protobuf.message import Message

from choreo import contracts
from choreo.handling import Handler, HandlerContext
from choreo.service import ServiceDefinition
from choreo.settings import RuntimeSettings
from shop.order.v1 import events_pb2 as order_events

log = logging.getLogger("hello")

SCHEMA = ["CREATE TABLE IF NOT EXISTS greetings (order_id TEXT PRIMARY KEY, customer TEXT)"]


async def on_order_created(ctx: HandlerContext, event: order_events.OrderCreated) -> None:
    # One transaction with the runtime's inbox and outbox rows: a redelivery changes nothing.
    await ctx.tx.execute(
        "INSERT INTO greetings (order_id, customer) VALUES (?, ?)",
        (event.order_id, event.customer_id),
    )
    greeted = hello_pb2.CustomerGreeted(order_id=event.order_id, customer_id=event.customer_id)
    ctx.emit(greeted, aggregate_id=event.order_id)
    log.info("hello, %s: order %s is placed", event.customer_id, event.order_id)


HANDLERS: dict[type[Message], Handler] = {order_events.OrderCreated: on_order_created}


def build(settings: RuntimeSettings) -> ServiceDefinition:
    contracts.use("acme.hello.v1")  # our event and reaction, read from the generated code
    return ServiceDefinition(name="hello", handlers=HANDLERS, schema=SCHEMA)
