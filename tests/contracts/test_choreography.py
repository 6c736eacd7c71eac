"""The saga graph written in proto/ options is exactly the flow table of the README."""

from __future__ import annotations

import pytest

from choreo import contracts
from choreo.choreography.v1 import choreography_pb2
from shop.common.v1 import money_pb2
from shop.inventory.v1 import inventory_service_pb2
from shop.notification.v1 import notification_service_pb2
from shop.order.v1 import events_pb2 as order_events
from shop.order.v1 import order_service_pb2
from shop.payment.v1 import payment_service_pb2
from shop.shipping.v1 import shipping_service_pb2

SERVICE_MODULES = (
    order_service_pb2,
    inventory_service_pb2,
    payment_service_pb2,
    shipping_service_pb2,
    notification_service_pb2,
)

# Every published event: short name -> (bounded context, aggregate type).
EVENTS: dict[str, tuple[str, str]] = {
    "OrderCreated": ("order", "order"),
    "v2/OrderCreated": ("order", "order"),  # beside v1 during its migration window
    "OrderConfirmed": ("order", "order"),
    "OrderShipped": ("order", "order"),
    "OrderCancelled": ("order", "order"),
    "InventoryReserved": ("inventory", "reservation"),
    "InventoryReservationFailed": ("inventory", "reservation"),
    "InventoryReleased": ("inventory", "reservation"),
    "InventoryShipped": ("inventory", "reservation"),
    "PaymentCompleted": ("payment", "payment"),
    "PaymentFailed": ("payment", "payment"),
    "PaymentRefunded": ("payment", "payment"),
    "ShipmentCreated": ("shipping", "shipment"),
    "ShippingFailed": ("shipping", "shipment"),
    "NotificationSent": ("notification", "notification"),
}


def full(name: str) -> str:
    """choreo.<context>.v<N>.<Event>, the event's full Protobuf name and NATS subject; a name
    without a ``v<N>/`` prefix is v1."""
    version, _, event = name.rpartition("/")
    return f"shop.{EVENTS[name][0]}.{version or 'v1'}.{event}"


# The README's flow table ("The saga"), row by row: trigger, reacting service, emits.
DESIGN_FLOW: list[tuple[str, str, set[str]]] = [
    ("OrderCreated", "inventory", {"InventoryReserved", "InventoryReservationFailed"}),
    ("v2/OrderCreated", "inventory", {"InventoryReserved", "InventoryReservationFailed"}),
    ("InventoryReserved", "payment", {"PaymentCompleted", "PaymentFailed"}),
    ("PaymentCompleted", "order", {"OrderConfirmed"}),
    ("PaymentCompleted", "shipping", {"ShipmentCreated", "ShippingFailed"}),
    ("ShipmentCreated", "order", {"OrderShipped"}),
    ("ShipmentCreated", "inventory", {"InventoryShipped"}),
    ("OrderShipped", "notification", {"NotificationSent"}),
    ("NotificationSent", "order", set()),
    ("InventoryReservationFailed", "order", {"OrderCancelled"}),
    ("PaymentFailed", "inventory", {"InventoryReleased"}),
    ("PaymentFailed", "order", {"OrderCancelled"}),
    ("ShippingFailed", "payment", {"PaymentRefunded"}),
    ("ShippingFailed", "inventory", {"InventoryReleased"}),
    ("ShippingFailed", "order", {"OrderCancelled"}),
    ("OrderCancelled", "notification", {"NotificationSent"}),
    # The saga deadline (order service): an order cancelled at its deadline is compensated by
    # the steps themselves; each reaction does nothing for the other cancellation reasons.
    ("OrderCancelled", "inventory", {"InventoryReleased"}),
    ("OrderCancelled", "payment", {"PaymentRefunded"}),
    ("OrderCancelled", "shipping", set()),
]
FLOW_TABLE: set[tuple[str, str, frozenset[str]]] = {
    (service, full(trigger), frozenset(full(name) for name in emits))
    for trigger, service, emits in DESIGN_FLOW
}


def test_service_options_describe_exactly_the_flow_table() -> None:
    edges = contracts.choreography()
    found = {(edge.service, edge.trigger, frozenset(edge.emits)) for edge in edges}

    assert found - FLOW_TABLE == set(), "reactions in proto/ that the flow table does not have"
    assert FLOW_TABLE - found == set(), "reactions of the flow table missing from proto/"
    assert len(edges) == len(FLOW_TABLE), "a reaction is declared twice"


def test_every_published_event_is_marked_with_its_aggregate_type() -> None:
    classes = contracts.event_classes()

    assert set(classes) == {full(name) for name in EVENTS}
    for name, (_, aggregate) in EVENTS.items():
        cls = classes[full(name)]
        assert cls.DESCRIPTOR.full_name == full(name)
        assert contracts.aggregate_type(cls) == aggregate
        assert cls.DESCRIPTOR.file.name.endswith("/events.proto")


def test_every_event_in_the_graph_is_a_known_event_and_every_event_is_in_the_graph() -> None:
    events = set(contracts.event_classes())
    edges = contracts.choreography()
    triggers = {edge.trigger for edge in edges}
    emitted = {name for edge in edges for name in edge.emits}
    commands = {name for names in contracts.command_emits().values() for name in names}

    assert triggers <= events
    assert emitted <= events
    assert emitted | commands == events, "an event that nothing emits"


def test_place_order_is_the_only_command_and_emits_order_created_in_either_version() -> None:
    assert contracts.command_emits() == {
        "shop.order.v1.OrderService.PlaceOrder": (
            "shop.order.v1.OrderCreated",
            "shop.order.v2.OrderCreated",
        )
    }


def _required() -> list[tuple[str, tuple[str, ...]]]:
    """Each failure and its required compensations, from the saga option (one source)."""
    return [
        (failure, req)
        for shape in contracts.sagas()
        for failure, req in shape.compensations.items()
    ]


def test_the_saga_declares_a_compensation_for_each_business_failure() -> None:
    assert {failure for failure, _ in _required()} == {
        full("InventoryReservationFailed"),
        full("PaymentFailed"),
        full("ShippingFailed"),
    }


@pytest.mark.parametrize(("failure", "required"), _required())
def test_each_failure_triggers_its_required_compensations(
    failure: str, required: tuple[str, ...]
) -> None:
    """The reactions to a failure emit exactly what the saga option requires after it."""
    compensations = {
        name for edge in contracts.choreography() if edge.trigger == failure for name in edge.emits
    }

    assert compensations == set(required)
    assert len(required) == len(set(required))


def test_aggregate_type_refuses_a_message_that_is_not_an_event() -> None:
    with pytest.raises(ValueError, match=r"shop\.common\.v1\.Money is not an event"):
        contracts.aggregate_type(money_pb2.Money)


def test_results_are_copies_that_callers_may_change() -> None:
    contracts.event_classes().clear()
    contracts.choreography().clear()
    contracts.command_emits().clear()

    assert contracts.event_classes()[full("OrderCreated")] is order_events.OrderCreated
    assert len(contracts.choreography()) == len(FLOW_TABLE)
    assert contracts.command_emits()


def test_mermaid_draws_every_reaction_and_command() -> None:
    text = contracts.mermaid(contracts.choreography(), contracts.command_emits())

    assert text.startswith("flowchart LR\n")
    for service, trigger, emits in FLOW_TABLE:
        source = trigger.replace(".", "_")
        for emitted in emits:
            assert f"{source} -->|{service}| {emitted.replace('.', '_')}" in text
        if not emits:
            assert f"{source} -->|{service}| {service}_records_" in text
    assert "shop_order_v1_OrderService_PlaceOrder --> shop_order_v1_OrderCreated" in text
    # The reactions that confirm an overtaken order first draw that as a dotted catch-up.
    confirmed = "shop_order_v1_OrderConfirmed"
    for trigger in ("ShipmentCreated", "ShippingFailed"):
        assert f"shop_shipping_v1_{trigger} -.->|order, catch-up| {confirmed}" in text
    assert text.count("catch-up") == 2
    assert text == contracts.mermaid(reversed(contracts.choreography()), contracts.command_emits())


def test_only_the_order_catches_up_and_only_with_order_confirmed() -> None:
    """The reactions that confirm a paid order first when its shipment's outcome overtook
    PaymentCompleted (services/order/domain.py: ship, cancel) are the ones that say so."""
    declared = {}
    for module in SERVICE_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            options = service.GetOptions().Extensions[choreography_pb2.choreography]
            declared.update(
                {
                    (service.name, r.trigger): list(r.catch_up)
                    for r in options.reactions
                    if r.catch_up
                }
            )
    assert declared == {
        ("OrderService", full("ShipmentCreated")): [full("OrderConfirmed")],
        ("OrderService", full("ShippingFailed")): [full("OrderConfirmed")],
    }
