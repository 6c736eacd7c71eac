"""Given a service's declared reactions (the choreography options in its .proto file), when
its handlers differ from them, then it does not start and the error names each difference."""

from __future__ import annotations

import pytest

from choreo.reactions import ReactionsMismatch, check_reactions, declared_triggers
from services.inventory.handlers import HANDLERS as INVENTORY_HANDLERS
from shop.order.v1 import events_pb2 as order_events
from shop.payment.v1 import events_pb2 as payment_events
from shop.shipping.v1 import events_pb2 as shipping_events

pytestmark = pytest.mark.unit


def test_the_reference_services_handle_exactly_what_they_declare() -> None:
    check_reactions("inventory", INVENTORY_HANDLERS)
    assert "shop.order.v1.OrderCreated" in (declared_triggers("inventory") or set())


def test_a_handler_for_an_undeclared_event_is_named() -> None:
    handled = [*INVENTORY_HANDLERS, payment_events.PaymentCompleted]
    with pytest.raises(ReactionsMismatch) as caught:
        check_reactions("inventory", handled)
    assert "shop.payment.v1.PaymentCompleted has a handler but is not among" in str(caught.value)


def test_a_declared_reaction_without_a_handler_is_named() -> None:
    handled = [cls for cls in INVENTORY_HANDLERS if cls is not order_events.OrderCreated]
    with pytest.raises(ReactionsMismatch) as caught:
        check_reactions("inventory", handled)
    message = str(caught.value)
    assert "shop.order.v1.OrderCreated is a declared reaction with no handler" in message
    assert "PaymentCompleted" not in message


def test_a_service_no_contract_declares_is_not_held_to_reactions() -> None:
    assert declared_triggers("probe") is None
    check_reactions("probe", [shipping_events.ShipmentCreated])
