"""The bus is a door too: an event published straight to a stream, skipping the gRPC door, is
held to the same buf.validate rules (and no NUL in any string) before any handler runs, against
a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from choreo import dlq, validation
from choreo.broker import EmbeddedBroker
from choreo.service import ServiceRuntime
from choreo.settings import RuntimeSettings
from choreo.testing import publish_event, wait_for
from tests.runtime import probe
from tests.testkit import desk_events, types

pytestmark = pytest.mark.usefixtures("testkit_contracts")


@pytest.fixture
async def runtime(broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[ServiceRuntime]:
    behaviour = probe.Behaviour()
    settings = RuntimeSettings(
        service="probe",
        nats_url=broker.url,
        database_url=f"sqlite:///{tmp_path / 'probe.db'}",
        fetch_timeout_s=0.2,
        relay_sweep_interval_s=0.2,
    )
    service = ServiceRuntime(probe.definition(behaviour), settings)
    service.definition.resources["behaviour"] = behaviour
    await service.start()
    yield service
    await service.stop()


def address(**fields: str) -> types.Address:
    values = {
        "recipient_name": "Ada",
        "line1": "1 Main St",
        "city": "Springfield",
        "country_code": "US",
    }
    values.update(fields)
    return types.Address(**values)


def opened(ticket_id: str, **fields: Any) -> desk_events.TicketOpened:
    values: dict[str, Any] = {
        "ticket_id": ticket_id,
        "customer_id": "c-1",
        "lines": [
            types.Line(
                sku="SKU-MUG",
                quantity=1,
                unit_price=types.Money(amount_minor=900, currency_code="USD"),
            )
        ],
        "total": types.Money(amount_minor=900, currency_code="USD"),
        "address": address(),
    }
    values.update(fields)
    return desk_events.TicketOpened(**values)


async def letters(js: Any) -> list[dlq.DeadLetter]:
    try:
        return await dlq.list_dead_letters(js)
    except Exception:
        return []


async def test_invalid_events_are_dead_letters_naming_the_field_and_never_handled(
    runtime: ServiceRuntime, js: Any, tmp_path: Path
) -> None:
    await publish_event(js, opened("o-nul", customer_id="c\x00-1"), aggregate_id="o-nul")
    await publish_event(
        js,
        opened(
            "o-address",
            address=address(line1="1 Main\x00St"),
            total=types.Money(amount_minor=-5, currency_code="USD"),
        ),
        aggregate_id="o-address",
    )
    await publish_event(js, opened("o-valid"), aggregate_id="o-valid")

    async def settled() -> bool:
        return len(await letters(js)) == 2 and "o-valid" in probe.effect_counts(
            tmp_path / "probe.db"
        )

    await wait_for(settled, what="two dead letters and the valid event handled")
    by_order = {
        desk_events.TicketOpened.FromString(letter.body).ticket_id: letter
        for letter in await letters(js)
    }
    assert set(by_order) == {"o-nul", "o-address"}
    for letter in by_order.values():
        assert letter.reason == validation.INVALID_EVENT
        assert not letter.alarm
    assert "customer_id: contains a NUL character" in by_order["o-nul"].detail
    detail = by_order["o-address"].detail
    assert "address.line1" in detail and "total.amount_minor" in detail
    # No handler ran on either: nothing applied, nothing emitted for them.
    assert probe.effect_counts(tmp_path / "probe.db") == {"o-valid": 1}
    behaviour: probe.Behaviour = runtime.definition.resources["behaviour"]
    assert len(behaviour.attempts) == 1  # the valid event's run only


def test_a_field_left_unset_is_not_held_to_its_rules_but_what_it_carries_is() -> None:
    bare = desk_events.TicketOpened(ticket_id="o-1")  # an older producer's event, say
    assert validation.event_violations(bare) == []
    assert validation.event_violations(opened("o-2")) == []
    broken = opened("o-3", customer_id="c\x00", address=address(country_code="usa"))
    assert {v.path for v in validation.event_violations(broken)} == {
        "customer_id",
        "address.country_code",
    }
    cleaned = validation.without_invalid_fields(broken, validation.event_violations(broken))
    assert isinstance(cleaned, desk_events.TicketOpened)
    assert validation.event_violations(cleaned) == []
    assert (cleaned.customer_id, cleaned.address.country_code) == ("", "")
    assert cleaned.address.line1 == "1 Main St"  # the rest is kept
    assert broken.customer_id == "c\x00"  # a copy: the original is untouched


def test_nul_in_repeated_and_nested_strings_is_found_with_its_path() -> None:
    event = opened("o-4")
    event.lines[0].sku = "SKU\x00"
    found = {v.path: v.description for v in validation.event_violations(event)}
    assert "lines[0].sku" in found
    cleaned = validation.without_invalid_fields(event, validation.event_violations(event))
    assert isinstance(cleaned, desk_events.TicketOpened)
    assert cleaned.lines[0].sku == "" and cleaned.lines[0].quantity == 1
