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
from shop.common.v1 import address_pb2, money_pb2, order_line_pb2
from shop.order.v1 import events_pb2 as order_events
from tests.runtime import probe


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


def address(**fields: str) -> address_pb2.Address:
    values = {
        "recipient_name": "Ada",
        "line1": "1 Main St",
        "city": "Springfield",
        "postal_code": "12345",
        "country_code": "US",
    }
    values.update(fields)
    return address_pb2.Address(**values)


def created(order_id: str, **fields: Any) -> order_events.OrderCreated:
    values: dict[str, Any] = {
        "order_id": order_id,
        "customer_id": "c-1",
        "lines": [
            order_line_pb2.OrderLine(
                sku="SKU-MUG",
                quantity=1,
                unit_price=money_pb2.Money(amount_minor=900, currency_code="USD"),
            )
        ],
        "total": money_pb2.Money(amount_minor=900, currency_code="USD"),
        "shipping_address": address(),
    }
    values.update(fields)
    return order_events.OrderCreated(**values)


async def letters(js: Any) -> list[dlq.DeadLetter]:
    try:
        return await dlq.list_dead_letters(js)
    except Exception:
        return []


async def test_invalid_events_are_dead_letters_naming_the_field_and_never_handled(
    runtime: ServiceRuntime, js: Any, tmp_path: Path
) -> None:
    await publish_event(js, created("o-nul", customer_id="c\x00-1"), aggregate_id="o-nul")
    await publish_event(
        js,
        created(
            "o-address",
            shipping_address=address(line1="1 Main\x00St"),
            total=money_pb2.Money(amount_minor=-5, currency_code="USD"),
        ),
        aggregate_id="o-address",
    )
    await publish_event(js, created("o-valid"), aggregate_id="o-valid")

    async def settled() -> bool:
        return len(await letters(js)) == 2 and "o-valid" in probe.effect_counts(
            tmp_path / "probe.db"
        )

    await wait_for(settled, what="two dead letters and the valid event handled")
    by_order = {
        order_events.OrderCreated.FromString(letter.body).order_id: letter
        for letter in await letters(js)
    }
    assert set(by_order) == {"o-nul", "o-address"}
    for letter in by_order.values():
        assert letter.reason == validation.INVALID_EVENT
        assert not letter.alarm
    assert "customer_id: contains a NUL character" in by_order["o-nul"].detail
    detail = by_order["o-address"].detail
    assert "shipping_address.line1" in detail and "total.amount_minor" in detail
    # No handler ran on either: nothing applied, nothing emitted for them.
    assert probe.effect_counts(tmp_path / "probe.db") == {"o-valid": 1}
    behaviour: probe.Behaviour = runtime.definition.resources["behaviour"]
    assert len(behaviour.attempts) == 1  # the valid event's run only


def test_a_field_left_unset_is_not_held_to_its_rules_but_what_it_carries_is() -> None:
    bare = order_events.OrderCreated(order_id="o-1")  # an older producer's event, say
    assert validation.event_violations(bare) == []
    assert validation.event_violations(created("o-2")) == []
    broken = created("o-3", customer_id="c\x00", shipping_address=address(country_code="usa"))
    assert {v.path for v in validation.event_violations(broken)} == {
        "customer_id",
        "shipping_address.country_code",
    }
    cleaned = validation.without_invalid_fields(broken, validation.event_violations(broken))
    assert isinstance(cleaned, order_events.OrderCreated)
    assert validation.event_violations(cleaned) == []
    assert (cleaned.customer_id, cleaned.shipping_address.country_code) == ("", "")
    assert cleaned.shipping_address.line1 == "1 Main St"  # the rest is kept
    assert broken.customer_id == "c\x00"  # a copy: the original is untouched


def test_nul_in_repeated_and_nested_strings_is_found_with_its_path() -> None:
    event = created("o-4")
    event.lines[0].sku = "SKU\x00"
    found = {v.path: v.description for v in validation.event_violations(event)}
    assert "lines[0].sku" in found
    cleaned = validation.without_invalid_fields(event, validation.event_violations(event))
    assert isinstance(cleaned, order_events.OrderCreated)
    assert cleaned.lines[0].sku == "" and cleaned.lines[0].quantity == 1
