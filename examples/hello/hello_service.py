"""Hello, choreo: a service that greets every new order's customer, once per order."""

from __future__ import annotations

import logging

from google.protobuf.message import Message

from choreo.handling import Handler, HandlerContext
from choreo.order.v1 import events_pb2 as order_events
from choreo.service import ServiceDefinition
from choreo.settings import RuntimeSettings

log = logging.getLogger("hello")

SCHEMA = ["CREATE TABLE IF NOT EXISTS greetings (order_id TEXT PRIMARY KEY, customer TEXT)"]


async def on_order_created(ctx: HandlerContext, event: order_events.OrderCreated) -> None:
    # One transaction with the runtime's inbox row: a redelivered event changes nothing.
    await ctx.tx.execute(
        "INSERT INTO greetings (order_id, customer) VALUES (?, ?)",
        (event.order_id, event.customer_id),
    )
    log.info("hello, %s: order %s is placed", event.customer_id, event.order_id)


HANDLERS: dict[type[Message], Handler] = {order_events.OrderCreated: on_order_created}


def build(settings: RuntimeSettings) -> ServiceDefinition:
    return ServiceDefinition(name="hello", handlers=HANDLERS, schema=SCHEMA)
