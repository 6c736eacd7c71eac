"""`choreo saga ID` on a real nats-server: payloads decoded as JSON, failure reasons from the
events and from the saga's dead letters, and the latency of each hop (event -> the event it
caused); only that saga's messages are shown."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf.message import Message

from choreo import dlq, subjects, timeline
from choreo.broker import EmbeddedBroker
from choreo.envelope import Envelope
from choreo.settings import RuntimeSettings
from choreo.streams import ensure_streams
from choreo.testing import envelope_for
from shop.common.v1 import money_pb2
from shop.inventory.v1 import events_pb2 as inventory_events
from shop.order.v1 import events_pb2 as order_events
from shop.payment.v1 import events_pb2 as payment_events
from tests.cli import choreo

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


async def publish(
    js: Any, message: Message, order_id: str, *, at_ms: float, cause: Envelope | None, source: str
) -> Envelope:
    envelope = dataclasses.replace(
        envelope_for(message, aggregate_id=order_id, correlation_id=order_id, source=source),
        time=T0 + timedelta(milliseconds=at_ms),
        causation_id=cause.event_id if cause else "",
    )
    await js.publish(envelope.subject, message.SerializeToString(), headers=envelope.to_headers())
    return envelope


@pytest.fixture
async def failed_saga(broker: EmbeddedBroker, js: Any) -> str:
    """o-1: created, reserved 40 ms later, payment failed 60 ms after that (declined), and
    the notification service dead-lettered the PaymentFailed. o-2: another saga, same types."""
    await ensure_streams(js, RuntimeSettings(service="order", nats_url=broker.url))
    for order_id in ("o-2", "o-1"):
        created = await publish(
            js,
            order_events.OrderCreated(order_id=order_id, customer_id=f"c-{order_id}"),
            order_id,
            at_ms=0,
            cause=None,
            source="order",
        )
        reserved = await publish(
            js,
            inventory_events.InventoryReserved(order_id=order_id),
            order_id,
            at_ms=40,
            cause=created,
            source="inventory",
        )
        failed_message = payment_events.PaymentFailed(
            order_id=order_id,
            amount=money_pb2.Money(currency_code="USD", amount_minor=1299),
            reason=payment_events.PAYMENT_FAILURE_REASON_PAYMENT_DECLINED,
            detail="card declined by issuer",
        )
        failed = await publish(
            js, failed_message, order_id, at_ms=100, cause=reserved, source="payment"
        )
    await dlq.dead_letter(
        js,
        service="notification",
        subject=failed.subject,
        headers=failed.to_headers(),
        body=failed_message.SerializeToString(),
        reason=dlq.RETRIES_EXHAUSTED,
        detail="smtp relay refused the message",
        stream=subjects.stream_name("shop.payment"),
        stream_seq=2,
        deliveries=5,
    )
    return broker.url


async def test_saga_shows_hops_failures_and_payloads(failed_saga: str) -> None:
    result = choreo("saga", "o-1", "--payloads", "--nats-url", failed_saga)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    lines = out.splitlines()
    reserved = next(line for line in lines if "InventoryReserved" in line and "<-" in line)
    assert "40.0 ms" in reserved and "<- OrderCreated" in reserved
    failed = next(line for line in lines if "PaymentFailed" in line and "<-" in line)
    assert "60.0 ms" in failed and "+   100.0 ms" in failed
    assert "failure: PAYMENT_FAILURE_REASON_PAYMENT_DECLINED: card declined by issuer" in out
    assert '"customer_id": "c-o-1"' in out, "OrderCreated's payload, decoded"
    assert '"amount_minor": "1299"' in out
    assert "c-o-2" not in out, "only this saga's events"
    assert "dead letter 1 (notification gave up on PaymentFailed, retries_exhausted, open)" in out
    assert "smtp relay refused the message" in out

    plain = choreo("saga", "o-1", "--nats-url", failed_saga).stdout
    assert '"customer_id"' not in plain, "payloads only when asked"
    assert "failure: PAYMENT_FAILURE_REASON_PAYMENT_DECLINED" in plain


async def test_saga_as_json(failed_saga: str) -> None:
    result = choreo("saga", "o-1", "--json", "--nats-url", failed_saga)
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    steps = view["steps"]
    assert [s["event_type"].rsplit(".", 1)[-1] for s in steps] == [
        "OrderCreated",
        "InventoryReserved",
        "PaymentFailed",
    ]
    assert [s["hop_ms"] for s in steps] == [None, 40.0, 60.0]
    assert steps[2]["failure"] == "PAYMENT_FAILURE_REASON_PAYMENT_DECLINED: card declined by issuer"
    assert steps[0]["payload"]["customer_id"] == "c-o-1"
    assert [d["service"] for d in view["dead_letters"]] == ["notification"]
    assert len(view["failures"]) == 2


async def test_a_resolved_dead_letter_shows_its_resolution(failed_saga: str, js: Any) -> None:
    await dlq.discard(js, 1, note="customer unsubscribed", by="carol")
    view = await timeline.saga(js, "o-1")
    assert any("discarded by carol" in failure for failure in view.failures)
    assert (await timeline.saga(js, "o-2")).dead_letters == []


async def test_an_unknown_saga_is_a_message_and_exit_1(failed_saga: str) -> None:
    result = choreo("saga", "nope", "--nats-url", failed_saga)
    assert result.returncode == 1 and "(no events)" in result.stdout
