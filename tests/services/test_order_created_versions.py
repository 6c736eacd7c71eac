"""OrderCreated v1 and v2 on the same stream: sagas complete whichever versions the order
service publishes (CHOREO_ORDER_CREATED_VERSIONS), while a v1-only downstream consumer and a
v2 consumer, each with its own durable pull consumer, read what they understand.

The five services run in-process on a real nats-server; the order service is restarted with
a different setting between sagas, as a migration does: v1 only, then both (the window), then
v2 only.
"""

from __future__ import annotations

from typing import Any

import pytest
from nats.js import api

from choreo import subjects
from choreo.envelope import Envelope
from choreo.errors import ConfigurationError
from choreo.testing import wait_for
from services.order.domain import OrderStatus
from services.settings import SagaSettings
from services.values import decimal_to_minor
from shop.inventory.v1 import events_pb2 as inventory_events
from shop.order.v1 import events_pb2 as order_v1
from shop.order.v2 import events_pb2 as order_v2
from tests.services import emitted
from tests.services.saga_harness import Saga, saga

__all__ = ["saga"]  # the fixture


async def downstream_reader(js: Any, durable: str, event_type: str) -> Any:
    """A downstream team's own durable pull consumer on one event type (one version)."""
    await js.add_consumer(
        subjects.stream_name("shop.order"),
        api.ConsumerConfig(
            durable_name=durable,
            filter_subject=subjects.event_type_filter(event_type),
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
        ),
    )
    return await js.pull_subscribe_bind(durable, stream=subjects.stream_name("shop.order"))


async def read_all(sub: Any) -> list[tuple[Envelope, bytes]]:
    read: list[tuple[Envelope, bytes]] = []
    while True:
        try:
            batch = await sub.fetch(50, timeout=1.0)
        except TimeoutError:
            return read
        for msg in batch:
            read.append((Envelope.from_headers(msg.headers), msg.data))
            await msg.ack()


async def run_saga(s: Saga, versions: str) -> str:
    """Restart the order service publishing ``versions``, place an order, see it end."""
    if "order" in s.runtimes:
        await s.stop("order")
    s.env["CHOREO_ORDER_CREATED_VERSIONS"] = versions
    await s.start("order")
    order_id = await s.place()

    async def ended() -> bool:
        order = await s.order(order_id)
        return order.status is OrderStatus.SHIPPED and order.customer_notified

    await wait_for(ended, timeout=30, what=f"order {order_id} (OrderCreated {versions}) to end")
    return order_id


async def test_sagas_complete_on_v1_v2_and_both_with_v1_only_and_v2_readers_present(
    saga: Saga, js: Any
) -> None:
    await saga.start("inventory", "payment", "shipping", "notification")
    v1_reader = await downstream_reader(js, "billing__order_v1", "shop.order.v1.OrderCreated")
    v2_reader = await downstream_reader(js, "analytics__order_v2", "shop.order.v2.OrderCreated")

    only_v1 = await run_saga(saga, "1")
    window = await run_saga(saga, "1,2")
    only_v2 = await run_saga(saga, "2")

    # The v1-only team keeps reading v1 through the window; the v2 team reads v2 from it on.
    v1_read = await read_all(v1_reader)
    v2_read = await read_all(v2_reader)
    assert [e.aggregate_id for e, _ in v1_read] == [only_v1, window]
    assert [e.aggregate_id for e, _ in v2_read] == [window, only_v2]
    assert {e.event_type for e, _ in v1_read} == {"shop.order.v1.OrderCreated"}
    assert {e.event_type for e, _ in v2_read} == {"shop.order.v2.OrderCreated"}

    # Both versions of the window's order say the same, v2 in exact decimals.
    (v1,) = [order_v1.OrderCreated.FromString(b) for e, b in v1_read if e.aggregate_id == window]
    (v2,) = [order_v2.OrderCreated.FromString(b) for e, b in v2_read if e.aggregate_id == window]
    assert v1.total.amount_minor > 0
    assert decimal_to_minor(v2.total.units, v2.total.nanos, v2.total.currency_code) == (
        v1.total.amount_minor
    )
    assert [(line.sku, line.quantity) for line in v2.lines] == [
        (line.sku, line.quantity) for line in v1.lines
    ]
    for line_v1, line_v2 in zip(v1.lines, v2.lines, strict=True):
        total = line_v2.line_total
        assert decimal_to_minor(total.units, total.nanos, total.currency_code) == (
            line_v1.unit_price.amount_minor * line_v1.quantity
        )
    # The window's twins are one fact for the saga: reserved once, charged once.
    reserved = [e.order_id for e in await emitted(js, inventory_events.InventoryReserved)]
    assert sorted(reserved) == sorted([only_v1, window, only_v2])
    ledger = await saga.payments()
    assert [ledger.charges.get(o, 0) for o in (only_v1, window, only_v2)] == [1, 1, 1]
    # Stock is conserved: what was reserved is shipped, nothing is left reserved. The last
    # saga ended when its customer was told; inventory moves its units from reserved to shipped
    # on ShipmentCreated, off that path, so that may still be on its way.

    async def nothing_reserved() -> bool:
        return all(lv.reserved == 0 for lv in await saga.stock())

    await wait_for(nothing_reserved, what="the last shipment's units to leave reserved")
    levels = await saga.stock()
    assert all(lv.initial == lv.available + lv.reserved + lv.shipped for lv in levels)
    assert all(lv.reserved == 0 for lv in levels)


@pytest.mark.parametrize(
    ("raw", "versions"), [("1", (1,)), ("2", (2,)), ("1,2", (1, 2)), ("v2, v1", (1, 2))]
)
def test_the_setting_lists_the_versions_to_publish(raw: str, versions: tuple[int, ...]) -> None:
    settings = SagaSettings.from_env({"CHOREO_ORDER_CREATED_VERSIONS": raw})
    assert settings.order_created_versions == versions


def test_by_default_only_v1_is_published() -> None:
    assert SagaSettings.from_env({}).order_created_versions == (1,)


@pytest.mark.parametrize("raw", ["", "3", "1,3", "one", "1;2"])
def test_a_wrong_setting_fails_naming_the_variable_and_the_choices(raw: str) -> None:
    with pytest.raises(ConfigurationError, match=r"CHOREO_ORDER_CREATED_VERSIONS=.*\"1,2\""):
        SagaSettings.from_env({"CHOREO_ORDER_CREATED_VERSIONS": raw})
