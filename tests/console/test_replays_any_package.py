"""The console finds a dead letter's replays, and a saga's dead letters, whatever contract
package the event is from: this project's (``shop.order.v1...`` in ``SHOP_ORDER``) or another
team's (``acme.loyalty.v1...`` in ``ACME_LOYALTY``), on a real nats-server."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from nats.js import api

from choreo import contracts, dlq, subjects
from choreo.console import reads
from choreo.settings import RuntimeSettings
from choreo.streams import context_stream_config, create_if_absent, dlq_stream_config

# Who receives each test event: a service of the choreography (inventory reacts to
# OrderCreated), and one it does not know (``points``), whose durable on the stream shows it.
CONSUMERS = {"shop.order": "inventory", "acme.loyalty": "points"}


async def file_letter(js: Any, context: str, subject: str) -> int:
    """Publish an event on ``subject`` and file it as a dead letter of the service that
    receives it; returns the letter's seq."""
    settings = RuntimeSettings()
    await create_if_absent(js, context_stream_config(context, settings))
    await create_if_absent(js, dlq_stream_config(settings))
    service = CONSUMERS[context]
    stream = subjects.stream_name(context)
    event_filter = subject.rsplit(".", 1)[0] + ".>"
    await js.add_consumer(
        stream,
        api.ConsumerConfig(
            durable_name=f"{service}__{event_filter.replace('.', '_').strip('_>')}",
            ack_policy=api.AckPolicy.EXPLICIT,
            filter_subject=event_filter,
        ),
    )
    original = await js.publish(
        subject, b"payload", headers={"Nats-Msg-Id": f"e-{subject}", "ce-id": f"e-{subject}"}
    )
    await dlq.dead_letter(
        js,
        service=service,
        subject=subject,
        headers={"ce-id": f"e-{subject}"},
        body=b"payload",
        reason="retries_exhausted",
        detail="a test letter",
        stream=subjects.stream_name(context),
        stream_seq=original.seq,
        deliveries=6,
    )
    letters = await dlq.list_dead_letters(js)
    return next(letter.seq for letter in letters if letter.subject == subject)


@pytest.mark.parametrize(
    ("context", "subject"),
    [
        ("shop.order", "shop.order.v1.OrderCreated.o-1"),
        ("acme.loyalty", "acme.loyalty.v1.PointsAwarded.o-1"),
    ],
)
async def test_a_replay_is_found_on_the_letters_own_stream(
    js: Any, context: str, subject: str
) -> None:
    seq = await file_letter(js, context, subject)
    letter = await dlq.get_dead_letter(js, seq)
    assert await reads.replays_of(js, letter) == []  # not replayed yet

    msg_id = await dlq.replay(js, seq)

    replays = await reads.replays_of(js, letter)
    stream = subjects.stream_name(context)
    assert stream == ("ACME_LOYALTY" if context == "acme.loyalty" else "SHOP_ORDER")
    assert [(r.stream, r.msg_id) for r in replays] == [(stream, msg_id)]
    stored = await js.get_msg(stream, replays[0].seq)
    assert stored.subject == subject and stored.headers[dlq.H_REPLAY_OF] == str(seq)


async def test_a_letter_whose_subject_is_no_event_has_no_replays(js: Any) -> None:
    seq = await file_letter(js, "shop.order", "shop.order.v1.OrderCreated.o-2")
    letter = await dlq.get_dead_letter(js, seq)
    odd = dataclasses.replace(letter, subject="not-an-event")
    assert await reads.replays_of(js, odd) == []


@pytest.fixture
def loyalty_contracts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The console run with another team's contract package (CHOREO_CONTRACTS) as well."""
    import tests.examples  # noqa: F401  (puts examples/loyalty's generated code on the path)

    monkeypatch.setenv(contracts.PACKAGES_VARIABLE, "acme.loyalty.v1")
    contracts.refresh()
    assert "acme.loyalty" in contracts.contexts()
    yield
    monkeypatch.delenv(contracts.PACKAGES_VARIABLE)
    contracts.refresh()


async def test_a_sagas_dead_letters_are_found_in_every_package(
    js: Any, loyalty_contracts: None
) -> None:
    ours = await file_letter(js, "shop.order", "shop.order.v1.OrderCreated.o-7")
    theirs = await file_letter(js, "acme.loyalty", "acme.loyalty.v1.PointsAwarded.o-7")
    await file_letter(js, "acme.loyalty", "acme.loyalty.v1.PointsAwarded.o-8")  # another saga

    detail = await reads.saga_detail(js, "o-7")

    assert sorted(letter.seq for letter in detail.dead_letters) == sorted([ours, theirs])


async def test_dlq_list_by_order_finds_the_letters_of_every_package(
    js: Any, loyalty_contracts: None
) -> None:
    """``choreo dlq list --order`` (and the timeline) read the DLQ by subject filters: the
    filters must end on the order id in every namespace, not only in ``choreo.*``."""
    settings = RuntimeSettings()
    await create_if_absent(js, dlq_stream_config(settings))
    for service, subject, order_id in (
        ("inventory", "shop.order.v1.OrderCreated.o-7", "o-7"),
        ("loyalty", "acme.loyalty.v1.PointsAwarded.o-7", "o-7"),
        ("loyalty", "acme.loyalty.v1.PointsAwarded.o-8", "o-8"),
    ):
        await dlq.dead_letter(
            js,
            service=service,
            subject=subject,
            headers={"ce-id": f"e-{subject}", "ce-correlationid": order_id},
            body=b"payload",
            reason="retries_exhausted",
            detail="a test letter",
            stream=subjects.stream_name(subjects.context_of(subject.rsplit(".", 1)[0])),
            stream_seq=1,
            deliveries=6,
        )

    found = await dlq.find_dead_letters(js, dlq.LetterFilter(order_id="o-7"))
    assert sorted(letter.subject for letter in found) == [
        "acme.loyalty.v1.PointsAwarded.o-7",
        "shop.order.v1.OrderCreated.o-7",
    ]
    theirs = await dlq.find_dead_letters(js, dlq.LetterFilter(order_id="o-7", service="loyalty"))
    assert [letter.subject for letter in theirs] == ["acme.loyalty.v1.PointsAwarded.o-7"]
