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
from tests.testkit import desk_events

OPENED = "testkit.desk.v1.TicketOpened"
HELD = "testkit.stock.v1.ItemsHeld"

pytestmark = pytest.mark.usefixtures("testkit_contracts")


def test_a_letters_service_and_subject_come_from_its_dead_letter_subject() -> None:
    subject = f"{HELD}.o-1"
    assert subjects.parse_dlq_subject(subjects.dlq_subject("ledger", subject)) == (
        "ledger",
        subject,
    )
    assert subjects.parse_dlq_subject("choreo.dlq.ledger") == ("", "")
    assert subjects.parse_dlq_subject(f"{OPENED}.o-1") == ("", "")


def test_subject_matching_follows_nats_wildcards() -> None:
    subject = f"{OPENED}.o-1"
    assert subjects.subject_matches(f"{OPENED}.>", subject)
    assert subjects.subject_matches("testkit.*.v1.TicketOpened.*", subject)
    assert subjects.subject_matches(">", subject)
    assert not subjects.subject_matches(OPENED, subject)
    assert not subjects.subject_matches(f"{OPENED}.o-1.>", subject)
    assert not subjects.subject_matches("testkit.desk.v1.TicketCancelled.>", subject)


def test_headers_that_disagree_with_the_subject_make_a_letter_suspect() -> None:
    subject = f"{HELD}.o-1"
    honest = dlq._letter(
        1,
        {dlq.H_SERVICE: "ledger", dlq.H_SUBJECT: subject},
        b"",
        subjects.dlq_subject("ledger", subject),
    )
    assert (honest.service, honest.subject, honest.suspect) == ("ledger", subject, False)
    forged = dlq._letter(
        2,
        {dlq.H_SERVICE: "ledger", dlq.H_SUBJECT: subject + "x"},
        b"",
        subjects.dlq_subject("desk", subject),
    )
    assert (forged.service, forged.subject) == ("desk", subject)
    assert len(forged.suspicions) == 2, forged.suspicions


async def test_a_source_about_to_age_out_is_not_replayed(
    broker: Any, js: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inbox rows are pruned max_age after the event was handled: a replay that reaches the
    services later than that could apply twice, so the source must have a margin of its
    retention left (10% of max_age here made 99% so that the test need not wait)."""
    settings = RuntimeSettings(
        service="desk", nats_url=broker.url, max_age_s=60.0, duplicate_window_s=30.0
    )
    await ensure_streams(js, settings)
    opened = desk_events.TicketOpened(ticket_id="o-1", customer_id="c-1")
    envelope = envelope_for(opened, aggregate_id="o-1", correlation_id="o-1")
    body = opened.SerializeToString()
    stored = await js.publish(envelope.subject, body, headers=envelope.to_headers())
    await dlq.dead_letter(
        js,
        service="stock",
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
