"""The console's reads on a real nats-server: the newest sagas are found however many other
events follow them, and an empty system is an empty list, not an error."""

from __future__ import annotations

from typing import Any

from choreo import subjects
from choreo.console import reads
from choreo.settings import RuntimeSettings
from choreo.streams import context_stream_config, create_if_absent
from choreo.testing import publish_event
from shop.order.v1 import events_pb2 as order_events


async def test_an_empty_system_has_no_sagas_and_no_dead_letters(js: Any) -> None:
    assert await reads.recent_sagas(js, 10) == []
    assert await reads.dead_letters(js) == []
    detail = await reads.saga_detail(js, "o-none")
    assert detail.events == [] and detail.dead_letters == []


async def test_the_newest_sagas_are_found_behind_many_later_events(js: Any) -> None:
    await create_if_absent(js, context_stream_config("shop.order", RuntimeSettings()))
    order_ids = [f"o-{i:03d}" for i in range(30)]
    for order_id in order_ids:
        await publish_event(
            js,
            order_events.OrderCreated(order_id=order_id, customer_id=f"c-{order_id}"),
            aggregate_id=order_id,
            correlation_id=order_id,
            source="order",
        )
    # Far more than the first window back from the end of the stream holds (6 per saga, at
    # least 64): the read has to look further back.
    for n in range(200):
        order_id = order_ids[n % 30]
        await publish_event(
            js,
            order_events.OrderConfirmed(order_id=order_id),
            aggregate_id=order_id,
            correlation_id=order_id,
            source="order",
        )

    newest = await reads.newest_created(js, 5)
    assert [m.headers["ce-correlationid"] for m in newest] == order_ids[-5:]
    assert all(
        m.subject.startswith(subjects.event_type_filter("shop.order.v1.OrderCreated")[:-1])
        for m in newest
    )
    everything = await reads.newest_created(js, 100)
    assert [m.headers["ce-correlationid"] for m in everything] == order_ids

    sagas = await reads.recent_sagas(js, 5)
    assert [s.order_id for s in sagas] == list(reversed(order_ids[-5:]))
    assert all(s.state.status == "confirmed" and not s.state.done for s in sagas)
    assert sagas[0].customer_id == f"c-{order_ids[-1]}"
    # Every throwaway consumer is gone (they would expire anyway, after 30 s).
    info = await js.stream_info(subjects.stream_name("shop.order"))
    assert info.state.consumer_count == 0
