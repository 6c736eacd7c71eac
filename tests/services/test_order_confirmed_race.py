"""The forced race: the shipment's outcome reaches the order service before PaymentCompleted.

The five services run in-process on a real nats-server. The order service's PaymentCompleted
handler is held until the order has already been shipped or cancelled by the shipment's
outcome, so every paid order takes the late path. Each paid order's history must still hold
OrderConfirmed exactly once, before OrderShipped or OrderCancelled, in version order.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict
from typing import Any, TypeVar

from google.protobuf.message import Message

from choreo import subjects
from choreo.envelope import Envelope
from choreo.handling import HandlerContext
from choreo.service import ServiceRuntime
from choreo.settings import RuntimeSettings
from choreo.streamread import read_stream
from choreo.testing import wait_for
from services import registry
from services.order import store as order_store
from services.workload import SagaPath
from shop.order.v1 import events_pb2 as order_events
from shop.payment.v1 import events_pb2 as payment_events
from tests.services.saga_harness import Saga, saga

__all__ = ["saga"]  # the fixture

M = TypeVar("M", bound=Message)

# The held handler waits up to a few seconds, well inside its timeout and the ack wait.
PATIENT = {"CHOREO_HANDLER_TIMEOUT_S": "10", "CHOREO_ACK_WAIT_S": "20"}
HOLD_LIMIT_S = 6.0


async def start_order_with_late_payments(s: Saga, overtaken: list[str]) -> None:
    """The order service, whose PaymentCompleted handler first waits until the order is final
    (the shipment's outcome got there first); ``overtaken`` collects the orders it saw so."""
    env, saga_settings = s.settings()
    settings = RuntimeSettings.from_env(
        {
            **env,
            "CHOREO_NATS_URL": s.broker.url,
            "CHOREO_DATABASE_URL": f"sqlite:///{s.tmp_path}/order.db",
        },
        service="order",
    )
    definition = registry.build("order", settings, saga_settings)
    on_time = definition.handlers[payment_events.PaymentCompleted]
    holder: list[ServiceRuntime] = []

    async def late(ctx: HandlerContext, event: Any) -> None:
        # Before the handler's transaction opens, so the shipment's handler can commit.
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + HOLD_LIMIT_S
        while loop.time() < give_up_at:
            async with holder[0].db.read() as tx:
                order = await order_store.load_order(tx, event.order_id)
            if order is not None and order.status.is_final:
                overtaken.append(event.order_id)
                break
            await asyncio.sleep(0.05)
        await on_time(ctx, event)

    handlers = {**definition.handlers, payment_events.PaymentCompleted: late}
    runtime = ServiceRuntime(dataclasses.replace(definition, handlers=handlers), settings)
    holder.append(runtime)
    await runtime.start()
    s.runtimes["order"] = runtime


async def order_histories(js: Any) -> dict[str, list[tuple[int, int, str]]]:
    """Per order: (stream sequence, aggregate version, event name) of its order events."""
    histories: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for msg in await read_stream(js, subjects.stream_name("shop.order")):
        envelope = Envelope.from_headers(msg.headers)
        name = envelope.event_type.rsplit(".", 1)[-1]
        histories[envelope.aggregate_id].append((msg.seq, envelope.aggregate_version, name))
    return histories


async def paid_order_ids(js: Any) -> set[str]:
    paid = set()
    for msg in await read_stream(js, subjects.stream_name("shop.payment")):
        if subjects.event_type_of_subject(msg.subject) == "shop.payment.v1.PaymentCompleted":
            paid.add(payment_events.PaymentCompleted.FromString(msg.data).order_id)
    return paid


async def order_stream_events(js: Any, cls: type[M]) -> list[M]:
    name = cls.DESCRIPTOR.full_name
    return [
        cls.FromString(m.data)
        for m in await read_stream(js, subjects.stream_name("shop.order"))
        if subjects.event_type_of_subject(m.subject) == name
    ]


async def test_order_confirmed_precedes_the_outcome_when_payment_completed_arrives_last(
    saga: Saga, js: Any
) -> None:
    saga.env.update(PATIENT)
    overtaken: list[str] = []
    await start_order_with_late_payments(saga, overtaken)
    await saga.start("inventory", "payment", "shipping", "notification")
    shipped = [await saga.place() for _ in range(4)]
    refused = [await saga.place(country="AQ") for _ in range(2)]  # ShippingFailed
    declined = [await saga.place(SagaPath.PAYMENT_DECLINED)]  # never paid
    everyone = shipped + refused + declined

    async def all_ended() -> bool:
        orders = [await saga.order(order_id) for order_id in everyone]
        return all(o.status.is_final and o.customer_notified for o in orders)

    await wait_for(all_ended, timeout=40, what="every saga to end and its customer to be told")

    # Every late PaymentCompleted has been handled (the held handler records it first).
    async def all_held() -> bool:
        return len(overtaken) == len(shipped + refused)

    await wait_for(all_held, timeout=HOLD_LIMIT_S + 5, what="the held PaymentCompleted handlers")

    assert sorted(overtaken) == sorted(shipped + refused)  # the race happened every time
    assert await paid_order_ids(js) == set(shipped + refused)
    histories = await order_histories(js)
    expected = {
        **{o: ["OrderCreated", "OrderConfirmed", "OrderShipped"] for o in shipped},
        **{o: ["OrderCreated", "OrderConfirmed", "OrderCancelled"] for o in refused},
        **{o: ["OrderCreated", "OrderCancelled"] for o in declined},
    }
    for order_id, names in expected.items():
        history = histories[order_id]
        assert [name for _, _, name in history] == names, order_id
        # Version order is stream order, versions 1, 2, 3 without a gap.
        assert [version for _, version, _ in history] == list(range(1, len(names) + 1))
        assert [seq for seq, _, _ in history] == sorted(seq for seq, _, _ in history)

    confirmed = await order_stream_events(js, order_events.OrderConfirmed)
    ledger = await saga.payments()
    assert {c.order_id for c in confirmed} == set(shipped + refused)
    assert all(c.payment_id for c in confirmed)  # the shipment's outcome carried the id
    for order_id in shipped + refused:
        assert (await saga.order(order_id)).payment_id
        assert ledger.charges.get(order_id, 0) == 1
    cancelled = {e.order_id: e for e in await order_stream_events(js, order_events.OrderCancelled)}
    assert all(cancelled[o].charged for o in refused)  # the customer is told of the refund
    assert not cancelled[declined[0]].charged
