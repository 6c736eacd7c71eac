"""Where a dead letter comes from is read from its subject, and what it may replay is read back
from the source stream: the pure rules, and the replay window before the source ages out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from choreo import dlq, subjects
from choreo.settings import RuntimeSettings
from choreo.streams import ensure_streams
from choreo.testing import envelope_for
from shop.order.v1 import events_pb2 as order_events


def test_a_letters_service_and_subject_come_from_its_dead_letter_subject() -> None:
    subject = "shop.inventory.v1.InventoryReserved.o-1"
    assert subjects.parse_dlq_subject(subjects.dlq_subject("payment", subject)) == (
        "payment",
        subject,
    )
    assert subjects.parse_dlq_subject("choreo.dlq.payment") == ("", "")
    assert subjects.parse_dlq_subject("shop.order.v1.OrderCreated.o-1") == ("", "")


def test_subject_matching_follows_nats_wildcards() -> None:
    subject = "shop.order.v1.OrderCreated.o-1"
    assert subjects.subject_matches("shop.order.v1.OrderCreated.>", subject)
    assert subjects.subject_matches("shop.*.v1.OrderCreated.*", subject)
    assert subjects.subject_matches(">", subject)
    assert not subjects.subject_matches("shop.order.v1.OrderCreated", subject)
    assert not subjects.subject_matches("shop.order.v1.OrderCreated.o-1.>", subject)
    assert not subjects.subject_matches("shop.order.v1.OrderCancelled.>", subject)


def test_headers_that_disagree_with_the_subject_make_a_letter_suspect() -> None:
    subject = "shop.inventory.v1.InventoryReserved.o-1"
    honest = dlq._letter(
        1,
        {dlq.H_SERVICE: "payment", dlq.H_SUBJECT: subject},
        b"",
        subjects.dlq_subject("payment", subject),
    )
    assert (honest.service, honest.subject, honest.suspect) == ("payment", subject, False)
    forged = dlq._letter(
        2,
        {dlq.H_SERVICE: "payment", dlq.H_SUBJECT: subject + "x"},
        b"",
        subjects.dlq_subject("notification", subject),
    )
    assert (forged.service, forged.subject) == ("notification", subject)
    assert len(forged.suspicions) == 2, forged.suspicions


async def test_a_source_about_to_age_out_is_not_replayed(
    broker: Any, js: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inbox rows are pruned max_age after the event was handled: a replay that reaches the
    services later than that could apply twice, so the source must have a margin of its
    retention left (10% of max_age here made 99% so that the test need not wait)."""
    settings = RuntimeSettings(
        service="order", nats_url=broker.url, max_age_s=60.0, duplicate_window_s=30.0
    )
    await ensure_streams(js, settings)
    created = order_events.OrderCreated(order_id="o-1", customer_id="c-1")
    envelope = envelope_for(created, aggregate_id="o-1", correlation_id="o-1")
    body = created.SerializeToString()
    stored = await js.publish(envelope.subject, body, headers=envelope.to_headers())
    await dlq.dead_letter(
        js,
        service="inventory",
        subject=envelope.subject,
        headers=envelope.to_headers(),
        body=body,
        reason=dlq.RETRIES_EXHAUSTED,
        detail="x",
        stream=stored.stream,
        stream_seq=stored.seq,
        deliveries=5,
    )
    (letter,) = await dlq.list_dead_letters(js)
    assert (letter.suspect, letter.source_gone) == (False, ""), "fresh: replayable"

    monkeypatch.setattr(dlq, "_REPLAY_MARGIN_FRACTION", 0.99)  # 59.4 s of 60
    await asyncio.sleep(1.0)
    (letter,) = await dlq.list_dead_letters(js)
    assert "about to age out" in letter.source_gone
    with pytest.raises(dlq.SourceGone, match="about to age out"):
        await dlq.replay_letter(js, letter.seq)
    assert (await js.stream_info(stored.stream)).state.messages == 1, "nothing republished"
