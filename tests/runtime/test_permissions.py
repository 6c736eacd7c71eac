"""Least privilege on the bus: a real nats-server enforcing the permissions generated from the
choreography. A service cannot speak for another, and a client without credentials is shut out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import api

from choreo import permissions, subjects
from choreo.broker import EmbeddedBroker
from choreo.inventory.v1 import events_pb2 as inventory_events
from choreo.order.v1 import events_pb2 as order_events
from choreo.payment.v1 import events_pb2 as payment_events
from choreo.settings import RuntimeSettings
from choreo.streams import context_stream_config, dlq_stream_config
from choreo.testing import envelope_for, wait_for
from services.registry import SERVICE_NAMES

CREDENTIALS = permissions.generate_credentials([*SERVICE_NAMES, permissions.OPERATOR])


def test_each_service_publishes_only_its_own_context_and_dead_letters() -> None:
    perms = {p.user: p for p in permissions.system_permissions(SERVICE_NAMES)}
    inventory = perms["inventory"]
    event_subjects = [s for s in inventory.publish if not s.startswith("$")]
    assert event_subjects == ["choreo.inventory.>", "choreo.dlq.inventory.>"]
    assert inventory.subscribe == ("_INBOX_inventory.>",)
    # Consumers are pinned, by stream and name, to the event types the choreography says
    # inventory reacts to.
    creates = sorted(s for s in inventory.publish if ".CONSUMER.DURABLE.CREATE." in s)
    assert creates == sorted(
        f"$JS.API.CONSUMER.DURABLE.CREATE.{subjects.stream_name(subjects.context_of(t))}."
        f"{subjects.durable_name('inventory', t)}"
        for t in (
            "choreo.order.v1.OrderCreated",
            "choreo.order.v2.OrderCreated",  # beside v1 during its migration window
            "choreo.order.v1.OrderCancelled",  # at the saga deadline
            "choreo.payment.v1.PaymentFailed",
            "choreo.shipping.v1.ShipmentCreated",
            "choreo.shipping.v1.ShippingFailed",
        )
    )
    # Only the owner of a stream may create or change it.
    assert not any("STREAM.UPDATE.CHOREO_ORDER" in s for s in inventory.publish)


def test_the_credentials_file_is_private_and_its_repr_hides_passwords(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "nats-credentials.json"
    permissions.write_credentials_file(path, CREDENTIALS)
    assert path.stat().st_mode & 0o777 == 0o600
    read = permissions.read_credentials(path, "payment")
    assert read == CREDENTIALS["payment"]
    assert read.password not in repr(read)
    with pytest.raises(permissions.ConfigurationError, match="no entry for user 'nobody'"):
        permissions.read_credentials(path, "nobody")


@pytest.fixture
async def secured_broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    config = permissions.authorization_config(
        permissions.system_permissions(SERVICE_NAMES), CREDENTIALS
    )
    assert CREDENTIALS["order"].password not in config  # hashes only
    broker = EmbeddedBroker(store_dir=tmp_path / "js", extra_config=config)
    await broker.astart()
    try:
        yield broker
    finally:
        await broker.astop()


async def connect_as(broker: EmbeddedBroker, user: str, errors: list[str] | None = None) -> Any:
    async def collect(exc: Exception) -> None:
        if errors is not None:
            errors.append(str(exc))

    creds = CREDENTIALS[user]
    return await nats.connect(
        broker.url,
        user=creds.user,
        password=creds.password,
        inbox_prefix=permissions.inbox_prefix(user),
        error_cb=collect,
        allow_reconnect=False,
    )


async def refused(errors: list[str]) -> None:
    """Wait for the broker's permissions violation to reach the client's error callback: the
    -ERR comes back on its own, not as the answer to the refused publish."""

    async def reported() -> bool:
        return any("permissions violation for publish" in e.lower() for e in errors)

    try:
        await wait_for(reported, timeout=10, what="a permissions violation")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; errors reported: {errors}") from None


async def prepared_streams(broker: EmbeddedBroker) -> Any:
    operator = await connect_as(broker, permissions.OPERATOR)
    js = operator.jetstream()
    settings = RuntimeSettings()
    for context in ("order", "inventory", "payment"):
        await js.add_stream(context_stream_config(context, settings))
    await js.add_stream(dlq_stream_config(settings))
    return operator


async def stored(js: Any, stream: str) -> int:
    return int((await js.stream_info(stream)).state.messages)


async def test_a_client_without_credentials_cannot_connect(secured_broker: EmbeddedBroker) -> None:
    with pytest.raises(Exception, match=r"(?i)authorization|no servers"):
        await nats.connect(secured_broker.url, allow_reconnect=False, max_reconnect_attempts=0)
    with pytest.raises(Exception, match=r"(?i)authorization|no servers"):
        await nats.connect(
            secured_broker.url,
            user="inventory",
            password="guessed",
            allow_reconnect=False,
            max_reconnect_attempts=0,
        )


async def test_a_service_publishing_another_contexts_event_is_refused(
    secured_broker: EmbeddedBroker,
) -> None:
    operator = await prepared_streams(secured_broker)
    errors: list[str] = []
    inventory = await connect_as(secured_broker, "inventory", errors)
    try:
        js = inventory.jetstream(timeout=1.0)
        # Its own event is stored.
        own = inventory_events.InventoryReserved(order_id="o-1")
        envelope = envelope_for(own, aggregate_id="o-1", correlation_id="o-1")
        ack = await js.publish(
            envelope.subject, own.SerializeToString(), headers=envelope.to_headers()
        )
        assert ack.stream == "CHOREO_INVENTORY"
        # A payment event is not: the broker refuses it and says so.
        forged = payment_events.PaymentCompleted(order_id="o-1", payment_id="p-1")
        envelope = envelope_for(forged, aggregate_id="p-1", correlation_id="o-1")
        with pytest.raises(Exception):  # noqa: B017 - the PubAck never comes: a timeout
            await js.publish(
                envelope.subject, forged.SerializeToString(), headers=envelope.to_headers()
            )
        await refused(errors)
        assert await stored(operator.jetstream(), "CHOREO_PAYMENT") == 0
    finally:
        await inventory.close()
        await operator.close()


async def test_a_forged_inventory_reserved_from_outside_is_refused(
    secured_broker: EmbeddedBroker,
) -> None:
    """Payment charges on InventoryReserved: only inventory may publish one."""
    operator = await prepared_streams(secured_broker)
    errors: list[str] = []
    payment = await connect_as(secured_broker, "payment", errors)
    try:
        forged = inventory_events.InventoryReserved(order_id="o-forged")
        envelope = envelope_for(forged, aggregate_id="o-forged", correlation_id="o-forged")
        await payment.publish(envelope.subject, forged.SerializeToString(), headers=None)
        await payment.flush()
        await refused(errors)
        assert await stored(operator.jetstream(), "CHOREO_INVENTORY") == 0
    finally:
        await payment.close()
        await operator.close()


async def test_a_service_consumes_only_what_it_reacts_to(secured_broker: EmbeddedBroker) -> None:
    operator = await prepared_streams(secured_broker)
    errors: list[str] = []
    inventory = await connect_as(secured_broker, "inventory", errors)
    try:
        js = inventory.jetstream(timeout=2.0)
        created = order_events.OrderCreated(order_id="o-2")
        envelope = envelope_for(created, aggregate_id="o-2", correlation_id="o-2")
        await operator.jetstream().publish(
            envelope.subject, created.SerializeToString(), headers=envelope.to_headers()
        )
        trigger = "choreo.order.v1.OrderCreated"
        durable = subjects.durable_name("inventory", trigger)
        config = api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            filter_subject=subjects.event_type_filter(trigger),
        )
        await js.add_consumer("CHOREO_ORDER", config)
        sub = await js.pull_subscribe_bind(durable=durable, stream="CHOREO_ORDER")
        (msg,) = await sub.fetch(1, timeout=2.0)
        assert msg.headers["ce-id"] == envelope.event_id
        await msg.ack_sync(timeout=2.0)
        # A durable that is not inventory's own is refused, on a stream it reads or not.
        sneaky = api.ConsumerConfig(
            durable_name=subjects.durable_name("inventory", "choreo.order.v1.OrderConfirmed"),
            ack_policy=api.AckPolicy.EXPLICIT,
            filter_subject="choreo.order.v1.OrderConfirmed.>",
        )
        with pytest.raises(Exception):  # noqa: B017 - no reply is allowed through: a timeout
            await js.add_consumer("CHOREO_ORDER", sneaky)
        await refused(errors)
        errors.clear()
        spy = api.ConsumerConfig(durable_name="spy", ack_policy=api.AckPolicy.NONE)
        with pytest.raises(Exception):  # noqa: B017
            await js.add_consumer("CHOREO_PAYMENT", spy)
        assert not await operator.jetstream().consumers_info("CHOREO_PAYMENT")
    finally:
        await inventory.close()
        await operator.close()
