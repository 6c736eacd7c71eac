"""The runtime's connections (choreo.natsconn.RuntimeClient, with choreo.natsheaders' header
fast path) and stock nats-py clients read each other's headers the same, through a real
nats-server; headers the fast path does not take still go through nats-py's own checks."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest
from nats.errors import BadHeaderError

from choreo import natsconn
from choreo.broker import EmbeddedBroker
from choreo.testing import envelope_for
from shop.order.v1 import events_pb2 as order_events

HEADER_SETS = [
    envelope_for(
        order_events.OrderCreated(order_id="o-1"), aggregate_id="o-1", source="order"
    ).to_headers(),
    {"plain": "value", "spaced": "  around  ", "empty": ""},
    {"unicode": "café ☕", "tab": "a\tb"},
    {"broken": "line\r\nforged: yes"},
]


async def _received(sender: Any, receiver: Any, headers: dict[str, str]) -> dict[str, str]:
    subject = receiver.new_inbox()  # a subject of its own: nothing of an earlier call reaches it
    sub = await receiver.subscribe(subject)
    await receiver.flush(timeout=10)
    # A core NATS subscription that another connection has just made, even confirmed by a
    # flush, can miss a message published right after it (seen here in 2 of 60 tries with
    # two stock nats-py clients, 0 of 60 with 0.2 s between): core NATS promises nothing
    # more, so the sender publishes the same message until one arrives.
    for _ in range(50):
        await sender.publish(subject, b"body", headers=headers)
        await sender.flush(timeout=10)
        try:
            msg = await sub.next_msg(timeout=0.2)
            break
        except nats.errors.TimeoutError:
            continue
    else:
        raise AssertionError(f"nothing arrived on {subject} in 50 tries")
    await sub.unsubscribe()
    assert msg.data == b"body"
    got: dict[str, str] = msg.headers
    return got


@pytest.mark.parametrize("headers", HEADER_SETS)
async def test_runtime_and_stock_clients_read_each_other_alike(
    broker: EmbeddedBroker, headers: dict[str, str]
) -> None:
    runtime = await natsconn.connect([broker.url])
    stock = await nats.connect(broker.url)
    try:
        assert isinstance(runtime, natsconn.RuntimeClient)
        # What a stock client reads of a stock client's message is the reference.
        expected = await _received(stock, stock, headers)
        assert await _received(runtime, stock, headers) == expected
        assert await _received(stock, runtime, headers) == expected
        assert await _received(runtime, runtime, headers) == expected
    finally:
        await asyncio.gather(runtime.close(), stock.close())


async def test_a_bad_header_name_is_refused_as_nats_py_refuses_it(broker: EmbeddedBroker) -> None:
    runtime = await natsconn.connect([broker.url])
    try:
        with pytest.raises(BadHeaderError):
            await runtime.publish("wire.test", b"", headers={"bad name": "x"})
    finally:
        await runtime.close()
