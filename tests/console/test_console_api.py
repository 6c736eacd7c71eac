"""The console's JSON API against the real system: five service processes, a real nats-server,
``choreo console`` as a process of its own, orders placed over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import nats
import pytest

from choreo import dlq, timeline
from choreo.testing import wait_for
from services.system import System
from shop.order.v1 import order_service_pb2 as order_pb
from tests.console.harness import (
    Console,
    dead_letter_a_saga,
    place_order,
    running_console,
    running_system,
    wait_for_events,
    wait_until_done,
)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("console-api")) as running:
        yield running


@pytest.fixture(scope="module")
def console(system: System) -> Iterator[Console]:
    with running_console(system) as running:
        yield running


async def get(console: Console, path: str) -> tuple[int, Any]:
    return await asyncio.to_thread(console.get, path)


async def test_sagas_list_and_a_saga_match_what_the_streams_and_the_order_service_say(
    system: System, console: Console
) -> None:
    shipped = await place_order(system, customer="cust-api-1")
    cancelled = await place_order(system, customer="cust-api-2", country="AQ")
    for order_id in (shipped, cancelled):
        await wait_until_done(system, order_id)
    # Done is final and told; the steps off that path (a release, a refund) may still be on
    # their way, and the console and the streams are read one after the other below.
    await wait_for_events(system, shipped, ["InventoryShipped"])
    await wait_for_events(system, cancelled, ["PaymentRefunded", "InventoryReleased"])

    status, body = await get(console, "/api/sagas?limit=2")
    assert status == 200
    assert isinstance(body, dict)
    rows = body["sagas"]
    assert [row["order_id"] for row in rows] == [cancelled, shipped]  # newest first
    by_id = {row["order_id"]: row for row in rows}
    assert by_id[shipped]["status"] == "shipped" and by_id[shipped]["done"]
    assert by_id[cancelled]["status"] == "cancelled" and by_id[cancelled]["done"]
    assert by_id[shipped]["customer_id"] == "cust-api-1"
    for row in rows:
        assert 0 < row["duration_s"] < 60
    status, one = await get(console, "/api/sagas?limit=1")
    assert status == 200 and [row["order_id"] for row in one["sagas"]] == [cancelled]

    status, saga = await get(console, f"/api/sagas/{cancelled}")
    assert status == 200
    assert isinstance(saga, dict)
    assert saga["status"] == "cancelled" and saga["done"] and saga["dead_letters"] == []
    # The same events `choreo saga` rebuilds, in time order, each hop measured from its cause.
    nc = await nats.connect(system.nats_url)
    try:
        steps = await timeline.saga_steps(nc.jetstream(), cancelled)
    finally:
        await nc.close()
    events = saga["events"]
    assert sorted(e["event_id"] for e in events) == sorted(s.event_id for s in steps)
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    names = {e["event"] for e in events}
    assert {"OrderCreated", "ShippingFailed", "PaymentRefunded", "OrderCancelled"} <= names
    first = events[0]
    assert first["event"] == "OrderCreated" and first["cause"] == "command"
    assert first["hop_ms"] is None
    assert first["payload"]["order_id"] == cancelled
    assert first["payload"]["payment_token"] == "***"  # a token is not shown on a screen
    assert first["payload"]["shipping_address"]["country_code"] == "AQ"
    kinds = {e["event"]: e["kind"] for e in events}
    assert kinds["ShippingFailed"] == "failure" and kinds["PaymentRefunded"] == "compensation"
    for event in events[1:]:
        assert event["hop_ms"] is not None and 0 <= event["hop_ms"] < 30_000


async def test_bad_requests_get_a_clear_error(system: System, console: Console) -> None:
    for path, status, words in [
        ("/api/sagas?limit=0", 400, "limit"),
        ("/api/sagas?limit=lots", 400, "limit"),
        ("/api/sagas?limit=501", 400, "limit"),
        ("/api/sagas/no-such-order", 404, "no event of saga no-such-order"),
        ("/api/sagas/" + "x" * 129, 400, "order id"),
        ("/api/dead-letters/0", 400, "sequence"),
        ("/api/dead-letters/minus-one", 400, "sequence"),
        ("/api/dead-letters/999999", 404, "no dead letter 999999"),
    ]:
        got, body = await get(console, path)
        assert got == status, (path, body)
        assert isinstance(body, dict) and words in body["error"], (path, body)
    got, body = await asyncio.to_thread(console.post, "/api/dead-letters/999999/replay")
    assert got == 404 and "no dead letter" in body["error"]


async def test_a_dead_letter_is_listed_and_its_replay_completes_the_saga(
    system: System, console: Console
) -> None:
    order_id = await dead_letter_a_saga(system)

    async def filed() -> bool:
        status, body = await get(console, "/api/dead-letters")
        assert status == 200 and isinstance(body, dict)
        return any(letter["order_id"] == order_id for letter in body["dead_letters"])

    await wait_for(filed, timeout=60, what="the notification's dead letter")
    _, body = await get(console, "/api/dead-letters")
    assert isinstance(body, dict)
    (letter,) = [x for x in body["dead_letters"] if x["order_id"] == order_id]
    assert letter["service"] == "notification"
    assert letter["event"] == "OrderShipped"
    assert letter["reason"] == dlq.DELIVERY_LIMIT
    assert letter["alarm"] is True
    seq = letter["seq"]

    # The saga waits: shipped, but its customer was never told.
    _, saga = await get(console, f"/api/sagas/{order_id}")
    assert isinstance(saga, dict)
    assert saga["status"] == "shipped" and not saga["done"]
    assert [x["seq"] for x in saga["dead_letters"]] == [seq]
    _, detail = await get(console, f"/api/dead-letters/{seq}")
    assert isinstance(detail, dict)
    assert detail["payload"]["order_id"] == order_id and detail["replays"] == []

    # A form posted from another site cannot replay it; nothing is published.
    status, refused = await asyncio.to_thread(
        console.post, f"/api/dead-letters/{seq}/replay", {"Origin": "http://elsewhere.example"}
    )
    assert status == 403, refused
    _, detail = await get(console, f"/api/dead-letters/{seq}")
    assert isinstance(detail, dict) and detail["replays"] == []

    status, replayed = await asyncio.to_thread(console.post, f"/api/dead-letters/{seq}/replay")
    assert status == 200, replayed
    assert replayed["seq"] == seq and replayed["msg_id"].endswith(f":replay:{seq}")

    order = await wait_until_done(system, order_id)
    assert order.status == order_pb.ORDER_STATUS_SHIPPED and order.customer_notified

    async def done_in_console() -> bool:
        _, saga = await get(console, f"/api/sagas/{order_id}")
        return isinstance(saga, dict) and bool(saga["done"])

    await wait_for(done_in_console, timeout=30, what="the console to show the saga done")
    _, saga = await get(console, f"/api/sagas/{order_id}")
    assert isinstance(saga, dict)
    copies = [e for e in saga["events"] if e["copy"]]
    assert [(e["event"], e["replay_of"]) for e in copies] == [("OrderShipped", str(seq))]
    assert "NotificationSent" in {e["event"] for e in saga["events"]}
    _, detail = await get(console, f"/api/dead-letters/{seq}")
    assert isinstance(detail, dict)
    assert [r["msg_id"] for r in detail["replays"]] == [replayed["msg_id"]]
