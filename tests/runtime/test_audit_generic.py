"""``choreo audit``'s generic checks on a real nats-server, driven by the contracts' saga shape:
sagas of the shop published by hand, each good or broken in one known way, and the audit
names exactly the broken ones."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from choreo import audit, contracts
from choreo.broker import EmbeddedBroker
from choreo.settings import RuntimeSettings
from choreo.streams import context_stream_config, create_if_absent
from choreo.testing import publish_event
from shop.inventory.v1 import events_pb2 as inventory
from shop.notification.v1 import events_pb2 as notification
from shop.order.v1 import events_pb2 as order
from shop.payment.v1 import events_pb2 as payment
from shop.shipping.v1 import events_pb2 as shipping
from tests.cli import choreo

HAPPY: list[tuple[type[Message], str]] = [
    (order.OrderCreated, "order"),
    (inventory.InventoryReserved, "inventory"),
    (payment.PaymentCompleted, "payment"),
    (order.OrderConfirmed, "order"),
    (shipping.ShipmentCreated, "shipping"),
    (order.OrderShipped, "order"),
    (inventory.InventoryShipped, "inventory"),
    (notification.NotificationSent, "notification"),
]
PAYMENT_REFUSED: list[tuple[type[Message], str]] = [
    (order.OrderCreated, "order"),
    (inventory.InventoryReserved, "inventory"),
    (payment.PaymentFailed, "payment"),
    (inventory.InventoryReleased, "inventory"),
    (order.OrderCancelled, "order"),
    (notification.NotificationSent, "notification"),
]
# The carrier refused, and the stock was never released.
RELEASE_MISSING: list[tuple[type[Message], str]] = [
    (order.OrderCreated, "order"),
    (inventory.InventoryReserved, "inventory"),
    (payment.PaymentCompleted, "payment"),
    (shipping.ShippingFailed, "shipping"),
    (payment.PaymentRefunded, "payment"),
    (order.OrderCancelled, "order"),
    (notification.NotificationSent, "notification"),
]


def _event(cls: type[Message], order_id: str) -> Message:
    return json_format.ParseDict({"order_id": order_id}, cls())


async def _publish(
    js: Any,
    order_id: str,
    steps: list[tuple[type[Message], str]],
    *,
    twice: str = "",
    correlation: dict[str, str] | None = None,
) -> None:
    """One saga's events in order. ``twice``: the event (short name) published a second time
    with the same event id; ``correlation``: an event published with another correlation id."""
    for depth, (cls, source) in enumerate(steps):
        name = cls.DESCRIPTOR.name
        event_id = f"{order_id}-{depth}"
        fields: dict[str, Any] = {
            "aggregate_id": order_id,
            "correlation_id": (correlation or {}).get(name, order_id),
            "event_id": event_id,
            "chain_depth": depth,
            "source": source,
        }
        envelope = await publish_event(js, _event(cls, order_id), **fields)
        if name == twice:  # a second publication: another message id, the same event id
            await publish_event(js, _event(cls, order_id), msg_id=f"{event_id}-again", **fields)
        assert envelope.event_id == event_id


async def _shop_streams(js: Any) -> None:
    for context in contracts.contexts():
        await create_if_absent(js, context_stream_config(context, RuntimeSettings()))


async def _sagas(js: Any) -> None:
    await _shop_streams(js)
    await _publish(js, "o-happy", HAPPY)
    await _publish(js, "o-refused", PAYMENT_REFUSED)
    await _publish(js, "o-missing", RELEASE_MISSING)
    await _publish(js, "o-twice", HAPPY, twice="PaymentCompleted")
    await _publish(js, "o-stray", HAPPY, correlation={"ShipmentCreated": "someone-else"})
    await _publish(js, "o-running", HAPPY[:3])  # on its way


async def test_the_generic_audit_names_exactly_the_broken_sagas(js: Any) -> None:
    await _sagas(js)

    report = await audit.audit(js, grace=timedelta(seconds=60))

    assert sorted(str(v) for v in report.violations) == [
        "compensation: order o-missing: ShippingFailed needs one InventoryReleased, saw 0",
        "correlation: order o-stray: ShipmentCreated o-stray-4 has correlation id 'someone-else'",
        "duplicate: order o-twice: event id o-twice-2 (PaymentCompleted) published 2 times",
    ]
    assert {saga.key for saga in report.sagas} == {
        "o-happy",
        "o-refused",
        "o-missing",
        "o-twice",
        "o-stray",
        "o-running",
    }
    assert report.unfinished == ["o-running"]
    assert report.outcomes == {
        "order: OrderShipped": 3,
        "order: OrderCancelled": 2,
        "order: unfinished": 1,
    }
    assert report.orphans == 0 and not report.dead_letters
    assert report.events["PaymentCompleted"] == 5  # first copies only (o-twice once)

    # Past the grace window, the saga on its way is stuck: a violation too.
    late = await audit.audit(js, grace=timedelta(0))
    stuck = [str(v) for v in late.violations if v.check == "final"]
    assert stuck == [
        "final: order o-running: no final event (OrderShipped, OrderCancelled) within 0s;"
        " last event PaymentCompleted"
    ]


async def test_a_final_event_without_its_closing_event_and_two_finals_are_violations(
    js: Any,
) -> None:
    await _shop_streams(js)
    await _publish(js, "o-silent", HAPPY[:-1])  # never told the customer
    both: list[tuple[type[Message], str]] = [
        *HAPPY[:-1],
        (order.OrderCancelled, "order"),
        HAPPY[-1],
    ]
    await _publish(js, "o-both", both)

    report = await audit.audit(js, grace=timedelta(0))

    assert sorted(str(v) for v in report.violations) == [
        "closing: order o-silent: OrderShipped was never followed by NotificationSent",
        "final: order o-both: 2 final events: OrderShipped, OrderCancelled",
    ]
    # Within the grace window, the silent one is still waiting for its notification.
    waiting = await audit.audit(js, grace=timedelta(seconds=60))
    assert [v.check for v in waiting.violations] == ["final"]
    assert waiting.unfinished == ["o-silent"]


async def test_choreo_audit_prints_the_findings_and_exits_1(
    js: Any, broker: EmbeddedBroker
) -> None:
    await _shop_streams(js)
    await _publish(js, "o-happy", HAPPY)
    ok = await asyncio.to_thread(
        choreo, "audit", "--nats-url", broker.url, "--generic-only", "--settle-timeout", "0"
    )
    assert ok.returncode == 0, ok.stderr
    assert "1 order sagas: OrderShipped 1" in ok.stdout
    assert ok.stdout.rstrip().endswith("0 violation(s)")

    await _publish(js, "o-missing", RELEASE_MISSING)
    failed = await asyncio.to_thread(
        choreo, "audit", "--nats-url", broker.url, "--generic-only", "--settle-timeout", "0"
    )
    assert failed.returncode == 1, failed.stderr
    assert (
        "compensation: order o-missing: ShippingFailed needs one InventoryReleased, saw 0"
        in failed.stdout
    )
    assert failed.stdout.rstrip().endswith("1 violation(s)")
