"""What the console builds from stored messages, without any I/O: timelines, saga states and
summaries, the SVG of a saga's path, and the pages' escaping."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from google.protobuf.message import Message

from choreo import contracts, dlq
from choreo.console import model, svg, views
from choreo.console.reads import SagaDetail
from choreo.envelope import Envelope
from choreo.streamread import StoredMessage
from shop.inventory.v1 import events_pb2 as inventory_events
from shop.notification.v1 import events_pb2 as notification_events
from shop.order.v1 import events_pb2 as order_events
from shop.payment.v1 import events_pb2 as payment_events
from shop.shipping.v1 import events_pb2 as shipping_events

T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def stored(
    event: Message,
    *,
    order_id: str,
    event_id: str,
    ms: float,
    source: str,
    cause: str = "",
    depth: int = 0,
    seq: int = 1,
    extra: dict[str, str] | None = None,
) -> StoredMessage:
    envelope = Envelope(
        event_id=event_id,
        event_type=event.DESCRIPTOR.full_name,
        source=source,
        time=T0 + timedelta(milliseconds=ms),
        correlation_id=order_id,
        causation_id=cause,
        chain_depth=depth,
        aggregate_type="order",
        aggregate_id=order_id,
        aggregate_version=1,
    )
    context = event.DESCRIPTOR.full_name.split(".")[1]
    return StoredMessage(
        stream=f"CHOREO_{context.upper()}",
        seq=seq,
        subject=envelope.subject,
        headers={**envelope.to_headers(), **(extra or {})},
        data=event.SerializeToString(),
    )


def cancelled_saga(order_id: str = "o-1") -> list[StoredMessage]:
    """A saga the carrier refused: failure, three compensations, a notification. Listed out
    of time order, as reads of several streams return them."""
    return [
        stored(
            notification_events.NotificationSent(order_id=order_id),
            order_id=order_id,
            event_id="e8",
            ms=40,
            source="notification",
            cause="e6",
            depth=5,
        ),
        stored(
            order_events.OrderCreated(
                order_id=order_id, customer_id="cust-1", payment_token="tok_visa"
            ),
            order_id=order_id,
            event_id="e1",
            ms=0,
            source="order",
        ),
        stored(
            inventory_events.InventoryReserved(order_id=order_id),
            order_id=order_id,
            event_id="e2",
            ms=5,
            source="inventory",
            cause="e1",
            depth=1,
        ),
        stored(
            payment_events.PaymentCompleted(order_id=order_id),
            order_id=order_id,
            event_id="e3",
            ms=12,
            source="payment",
            cause="e2",
            depth=2,
        ),
        stored(
            shipping_events.ShippingFailed(order_id=order_id),
            order_id=order_id,
            event_id="e4",
            ms=20,
            source="shipping",
            cause="e3",
            depth=3,
        ),
        stored(
            payment_events.PaymentRefunded(order_id=order_id),
            order_id=order_id,
            event_id="e5",
            ms=31,
            source="payment",
            cause="e4",
            depth=4,
        ),
        stored(
            order_events.OrderCancelled(order_id=order_id),
            order_id=order_id,
            event_id="e6",
            ms=25,
            source="order",
            cause="e4",
            depth=4,
        ),
    ]


def test_the_timeline_is_in_time_order_with_each_hop_measured_from_its_cause() -> None:
    other = stored(
        order_events.OrderCreated(order_id="o-2"),
        order_id="o-2",
        event_id="x1",
        ms=1,
        source="order",
    )
    events = model.build_timeline([*cancelled_saga(), other], "o-1")

    assert [e.name for e in events] == [
        "OrderCreated",
        "InventoryReserved",
        "PaymentCompleted",
        "ShippingFailed",
        "OrderCancelled",
        "PaymentRefunded",
        "NotificationSent",
    ]
    assert [e.offset_ms for e in events] == [0, 5, 12, 20, 25, 31, 40]
    assert [e.hop_ms for e in events] == [None, 5, 7, 8, 5, 11, 15]
    assert [model.short_name(e.cause_type) for e in events[1:]] == [
        "OrderCreated",
        "InventoryReserved",
        "PaymentCompleted",
        "ShippingFailed",
        "ShippingFailed",
        "OrderCancelled",
    ]
    assert [e.kind for e in events] == [
        "step",
        "step",
        "step",
        "failure",
        "compensation",
        "compensation",
        "step",
    ]
    created = events[0].as_json()
    assert created["cause"] == "command" and created["hop_ms"] is None
    assert created["payload"]["customer_id"] == "cust-1"
    assert created["payload"]["payment_token"] == model.MASK


def test_a_replayed_copy_is_shown_once_more_and_measured_from_the_first_copy_of_its_cause() -> None:
    saga = cancelled_saga()
    replay = stored(
        shipping_events.ShippingFailed(order_id="o-1"),
        order_id="o-1",
        event_id="e4",
        ms=90,
        source="shipping",
        cause="e3",
        depth=3,
        seq=9,
        extra={dlq.H_REPLAY_OF: "3"},
    )
    events = model.build_timeline([*saga, replay], "o-1")
    copies = [e for e in events if e.copy]
    assert [(c.name, c.replay_of, c.hop_ms) for c in copies] == [("ShippingFailed", "3", 78)]
    # The copy adds no node and no arrow to the path: the event happened once.
    nodes, arrows = svg.saga_graph(events)
    assert len(nodes) == 1 + len({e.event_type for e in events})
    assert len(arrows) == len(events) - 1


def test_the_state_follows_the_order_events_and_the_saga_ends_with_the_notification() -> None:
    created, confirmed = "shop.order.v1.OrderCreated", "shop.order.v1.OrderConfirmed"
    shipped, cancelled = "shop.order.v1.OrderShipped", "shop.order.v1.OrderCancelled"
    notified = "shop.notification.v1.NotificationSent"
    pending = model.saga_state([created])
    assert (pending.status, pending.notified, pending.done, pending.kind) == (
        "pending",
        False,
        False,
        "running",
    )
    assert model.saga_state([created, confirmed]).outcome == "in progress"
    assert model.saga_state([created, confirmed]).status == "confirmed"
    waiting = model.saga_state([created, confirmed, shipped])
    assert waiting.status == "shipped" and not waiting.done and waiting.kind == "success"
    assert waiting.outcome == "shipped, waiting for NotificationSent"
    # A carrier refusal cancels an order already confirmed; the order of reading is irrelevant.
    late = model.saga_state([notified, cancelled, confirmed, created])
    assert late.status == "cancelled" and late.done and late.outcome == "cancelled"
    assert late.kind == "failure"
    # v2 of OrderCreated starts the same saga; a saga whose start aged out is still the shop's.
    assert model.saga_state(["shop.order.v2.OrderCreated", shipped, notified]).done
    assert model.saga_state([shipped, notified]).done


def test_the_summaries_are_newest_first_with_the_time_to_the_notification() -> None:
    first = cancelled_saga("o-1")
    second = [
        stored(
            order_events.OrderCreated(order_id="o-2", customer_id="cust-2"),
            order_id="o-2",
            event_id="f1",
            ms=100,
            source="order",
        ),
        stored(
            order_events.OrderConfirmed(order_id="o-2"),
            order_id="o-2",
            event_id="f2",
            ms=130,
            source="order",
            cause="f1",
        ),
    ]
    unlisted = stored(
        order_events.OrderShipped(order_id="o-3"),
        order_id="o-3",
        event_id="g1",
        ms=5,
        source="order",
    )
    start = "shop.order.v1.OrderCreated"
    created = [m for m in first + second if m.subject.startswith(start)]
    later = [m for m in first + second if not m.subject.startswith(start)]
    summaries = model.summarize_sagas(created, [*later, unlisted])

    assert [s.order_id for s in summaries] == ["o-2", "o-1"]
    running, done = summaries
    assert running.customer_id == "cust-2" and running.state.status == "confirmed"
    assert running.duration_s is None and running.finished_at is None
    assert done.state.done and done.state.status == "cancelled"
    assert done.duration_s == 0.040  # OrderCreated to NotificationSent
    assert done.as_json()["outcome"] == "cancelled" and done.as_json()["saga"] == "order"


def test_the_vocabulary_is_the_one_of_the_contracts() -> None:
    """Failures, compensations and starts come from the saga option, one source."""
    (shape,) = contracts.sagas()
    assert (
        model.failure_events()
        == set(shape.compensations)
        == {
            "shop.inventory.v1.InventoryReservationFailed",
            "shop.payment.v1.PaymentFailed",
            "shop.shipping.v1.ShippingFailed",
        }
    )
    assert model.compensation_events() == {
        e for needed in shape.compensations.values() for e in needed
    }
    # PlaceOrder emits OrderCreated in each schema version on the wire; the console lists a
    # saga by any of them.
    emits = contracts.command_emits()["shop.order.v1.OrderService.PlaceOrder"]
    assert set(emits) == set(model.start_events())
    assert {name: status for name, (status, _) in model.status_events(shape).items()} == {
        "shop.order.v1.OrderConfirmed": "confirmed",
        "shop.order.v1.OrderShipped": "shipped",
        "shop.order.v1.OrderCancelled": "cancelled",
    }


def test_a_body_that_is_not_its_event_says_so() -> None:
    unknown = model.decode_payload("shop.order.v1.NoSuchEvent", b"\x01")
    assert "unknown event type" in unknown["_error"]
    broken = model.decode_payload("shop.order.v1.OrderCreated", b"\xff\xff\xff")
    assert "not a valid shop.order.v1.OrderCreated body" in broken["_error"]


def test_the_svg_is_well_formed_with_one_node_per_event_type_and_arrows_in_order() -> None:
    events = model.build_timeline(cancelled_saga(), "o-1")
    drawing = svg.saga_svg(events)
    root = ET.fromstring(drawing)  # well-formed XML, as inline SVG must be
    ns = "{http://www.w3.org/2000/svg}"
    nodes = root.findall(f"{ns}g[@data-event]")
    assert root.get("data-nodes") == str(len(nodes)) == "8"
    kinds = {n.get("data-event"): (n.get("class") or "").split()[1] for n in nodes}
    assert kinds["PlaceOrder"] == "command"
    assert kinds["ShippingFailed"] == "failure"
    assert kinds["OrderCancelled"] == kinds["PaymentRefunded"] == "compensation"
    arrows = [g for g in root.findall(f"{ns}g") if g.get("class") == "arrow"]
    labels = ["".join(a.itertext()) for a in arrows]
    assert labels[0] == "1. order" and labels[3] == "4. shipping"
    assert [(a.get("data-from"), a.get("data-to")) for a in arrows][4:6] == [
        ("ShippingFailed", "OrderCancelled"),
        ("ShippingFailed", "PaymentRefunded"),
    ]
    # Hops run top to bottom: a cause is always drawn above what it caused.
    nodes_by_name, _ = svg.saga_graph(events)
    rank = {n.label: n.rank for n in nodes_by_name}
    assert rank["PlaceOrder"] < rank["OrderCreated"] < rank["ShippingFailed"]
    assert rank["OrderCancelled"] < rank["NotificationSent"]
    assert 'data-nodes="0"' in svg.saga_svg([])


def test_the_pages_escape_what_the_streams_hold_and_post_replays() -> None:
    hostile = "<script>alert(1)</script>"
    saga = cancelled_saga()
    saga[1] = stored(
        order_events.OrderCreated(order_id="o-1", customer_id=hostile),
        order_id="o-1",
        event_id="e1",
        ms=0,
        source=hostile,
    )
    events = model.build_timeline(saga, "o-1")
    page = views.saga_page(
        SagaDetail("o-1", events, model.saga_state(e.event_type for e in events))
    )
    assert hostile not in page and "&lt;script&gt;" in page
    assert "http-equiv" not in page  # a finished saga does not reload itself
    running = views.saga_page(SagaDetail("o-1", events[:2], model.saga_state([])))
    assert 'http-equiv="refresh"' in running
    ET.fromstring(svg.saga_svg(events))  # still well-formed with hostile names inside

    letter = dlq.DeadLetter(
        seq=7,
        service="notification",
        reason=dlq.DELIVERY_LIMIT,
        detail=hostile,
        subject="shop.shipping.v1.ShipmentCreated.o-1",
        headers={"ce-correlationid": "o-1", "ce-type": "shop.shipping.v1.ShipmentCreated"},
        body=b"",
        deliveries=2,
        dead_lettered_at=0.0,
    )
    listing = views.dead_letters_page([letter])
    assert "<form class='inline' method='post' action='/dead-letters/7/replay'>" in listing
    assert "href='/sagas/o-1'" in listing
    detail = views.dead_letter_page(letter, {}, [])
    assert hostile not in detail and "id='replay'" in detail
    notice = dlq.DeadLetter(**{**letter.__dict__, "headers": {dlq.H_PARKED: "outbox"}})
    assert "class='replay'" in listing
    assert "class='replay'" not in views.dead_letters_page([notice])  # nothing to publish
