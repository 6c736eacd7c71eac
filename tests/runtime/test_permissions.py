"""Least privilege on the bus: a real nats-server enforcing the permissions generated from the
choreography. A service cannot speak for another, and a client without credentials is shut out.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import api

from choreo import dlq, permissions, subjects
from choreo.broker import EmbeddedBroker
from choreo.settings import RuntimeSettings
from choreo.streams import context_stream_config, dlq_stream_config
from choreo.testing import envelope_for, wait_for
from services.registry import SERVICE_NAMES
from shop.inventory.v1 import events_pb2 as inventory_events
from shop.order.v1 import events_pb2 as order_events
from shop.payment.v1 import events_pb2 as payment_events
from tests.cli import choreo

CREDENTIALS = permissions.generate_credentials([*SERVICE_NAMES, permissions.OPERATOR])


def test_each_service_publishes_only_its_own_context_and_dead_letters() -> None:
    perms = {p.user: p for p in permissions.system_permissions(SERVICE_NAMES)}
    inventory = perms["inventory"]
    event_subjects = [s for s in inventory.publish if not s.startswith("$")]
    assert event_subjects == ["shop.inventory.>", "choreo.dlq.inventory.>"]
    assert inventory.subscribe == ("_INBOX_inventory.>",)
    # Consumers are pinned, by stream and name, to the event types the choreography says
    # inventory reacts to.
    creates = sorted(s for s in inventory.publish if ".CONSUMER.DURABLE.CREATE." in s)
    assert creates == sorted(
        f"$JS.API.CONSUMER.DURABLE.CREATE.{subjects.stream_name(subjects.context_of(t))}."
        f"{subjects.durable_name('inventory', t)}"
        for t in (
            "shop.order.v1.OrderCreated",
            "shop.order.v2.OrderCreated",  # beside v1 during its migration window
            "shop.order.v1.OrderCancelled",  # at the saga deadline
            "shop.payment.v1.PaymentFailed",
            "shop.shipping.v1.ShipmentCreated",
            "shop.shipping.v1.ShippingFailed",
        )
    )
    # Only the owner of a stream may create or change it.
    assert not any("STREAM.UPDATE.SHOP_ORDER" in s for s in inventory.publish)


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
    for context in ("shop.order", "shop.inventory", "shop.payment"):
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
        assert ack.stream == "SHOP_INVENTORY"
        # A payment event is not: the broker refuses it and says so.
        forged = payment_events.PaymentCompleted(order_id="o-1", payment_id="p-1")
        envelope = envelope_for(forged, aggregate_id="p-1", correlation_id="o-1")
        with pytest.raises(Exception):  # noqa: B017 - the PubAck never comes: a timeout
            await js.publish(
                envelope.subject, forged.SerializeToString(), headers=envelope.to_headers()
            )
        await refused(errors)
        assert await stored(operator.jetstream(), "SHOP_PAYMENT") == 0
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
        assert await stored(operator.jetstream(), "SHOP_INVENTORY") == 0
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
        trigger = "shop.order.v1.OrderCreated"
        durable = subjects.durable_name("inventory", trigger)
        config = api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            filter_subject=subjects.event_type_filter(trigger),
        )
        await js.add_consumer("SHOP_ORDER", config)
        sub = await js.pull_subscribe_bind(durable=durable, stream="SHOP_ORDER")
        (msg,) = await sub.fetch(1, timeout=2.0)
        assert msg.headers["ce-id"] == envelope.event_id
        await msg.ack_sync(timeout=2.0)
        # A durable that is not inventory's own is refused, on a stream it reads or not.
        sneaky = api.ConsumerConfig(
            durable_name=subjects.durable_name("inventory", "shop.order.v1.OrderConfirmed"),
            ack_policy=api.AckPolicy.EXPLICIT,
            filter_subject="shop.order.v1.OrderConfirmed.>",
        )
        with pytest.raises(Exception):  # noqa: B017 - no reply is allowed through: a timeout
            await js.add_consumer("SHOP_ORDER", sneaky)
        await refused(errors)
        errors.clear()
        spy = api.ConsumerConfig(durable_name="spy", ack_policy=api.AckPolicy.NONE)
        with pytest.raises(Exception):  # noqa: B017
            await js.add_consumer("SHOP_PAYMENT", spy)
        assert not await operator.jetstream().consumers_info("SHOP_PAYMENT")
    finally:
        await inventory.close()
        await operator.close()


# --- dead letters: a letter speaks only for the service whose user filed it -----------------


def credentials_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets" / "nats-credentials.json"
    permissions.write_credentials_file(path, CREDENTIALS)
    return path


def operator_cli(broker: EmbeddedBroker, creds: Path, *args: str) -> Any:
    """``choreo ARGS`` as the operator (its password from the credentials file, by path)."""
    return choreo(*args, "--nats-url", broker.url, CHOREO_NATS_CREDENTIALS_FILE=str(creds))


async def a_real_inventory_reserved(broker: EmbeddedBroker, order_id: str) -> tuple[Any, Any]:
    """InventoryReserved for ``order_id``, published by inventory's own user; (envelope, ack)."""
    inventory = await connect_as(broker, "inventory")
    try:
        event = inventory_events.InventoryReserved(
            order_id=order_id, reservation_id=f"r-{order_id}", customer_id="c-real"
        )
        envelope = envelope_for(event, aggregate_id=order_id, correlation_id=order_id)
        ack = await inventory.jetstream(timeout=2.0).publish(
            envelope.subject, event.SerializeToString(), headers=envelope.to_headers()
        )
        return envelope, ack
    finally:
        await inventory.close()


def forged_letter_headers(envelope: Any, *, service: str, stream: str, seq: int) -> dict[str, str]:
    return {
        **envelope.to_headers(),
        "Nats-Msg-Id": f"forged-{envelope.event_id}",
        dlq.H_REASON: dlq.RETRIES_EXHAUSTED,
        dlq.H_DETAIL: "gateway down",
        dlq.H_SERVICE: service,
        dlq.H_SUBJECT: envelope.subject,
        dlq.H_STREAM: stream,
        dlq.H_STREAM_SEQ: str(seq),
        dlq.H_DELIVERIES: "5",
        dlq.H_TIME: "1700000000.0",
    }


async def test_a_letter_forged_by_notification_for_payment_is_refused_and_listed_as_suspect(
    secured_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Finding 2 of issue 23: notification's user files a letter claiming to be payment's
    give-up on an InventoryReserved for a made-up order, carrying a body of its own making.
    Under payment's dead-letter subject the broker refuses it; under its own the letter is
    notification's (the subject says so, whatever the header claims), suspect, and replay
    publishes nothing."""
    operator = await prepared_streams(secured_broker)
    creds = credentials_file(tmp_path)
    _, real = await a_real_inventory_reserved(secured_broker, "o-real")
    made_up = inventory_events.InventoryReserved(
        order_id="o-forged", reservation_id="r-forged", customer_id="c-victim"
    )
    made_up.total.amount_minor = 9_999_900
    envelope = envelope_for(made_up, aggregate_id="o-forged", correlation_id="o-forged")
    headers = forged_letter_headers(envelope, service="payment", stream=real.stream, seq=real.seq)
    errors: list[str] = []
    notification = await connect_as(secured_broker, "notification", errors)
    try:
        js = notification.jetstream(timeout=1.0)
        # Under payment's subject: refused by the broker.
        with pytest.raises(Exception):  # noqa: B017 - the PubAck never comes: a timeout
            await js.publish(
                subjects.dlq_subject("payment", envelope.subject),
                made_up.SerializeToString(),
                headers=headers,
            )
        await refused(errors)
        assert await stored(operator.jetstream(), subjects.DLQ_STREAM) == 0
        # Under its own: stored, but it speaks for notification only.
        ack = await js.publish(
            subjects.dlq_subject("notification", envelope.subject),
            made_up.SerializeToString(),
            headers=headers,
        )
    finally:
        await notification.close()

    listed = operator_cli(secured_broker, creds, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (letter,) = json.loads(listed.stdout)
    assert letter["seq"] == ack.seq
    assert letter["service"] == "notification", "the service comes from the subject"
    assert letter["suspect"] is True
    assert any("claims the service 'payment'" in why for why in letter["suspicions"])
    assert any(
        "notification does not subscribe to shop.inventory.v1.InventoryReserved" in why
        for why in letter["suspicions"]
    )
    table = operator_cli(secured_broker, creds, "dlq", "list")
    assert "SUSPECT" in table.stdout and "notification" in table.stdout
    by_payment = operator_cli(
        secured_broker, creds, "dlq", "list", "--json", "--service", "payment"
    )
    assert json.loads(by_payment.stdout) == [], "nothing is payment's"

    replayed = operator_cli(secured_broker, creds, "dlq", "replay", str(ack.seq))
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert "suspect" in replayed.stderr and "claims the service 'payment'" in replayed.stderr
    assert "Traceback" not in replayed.stderr
    ops = operator.jetstream()
    assert await stored(ops, "SHOP_INVENTORY") == 1, "nothing was republished"
    assert (await dlq.get_dead_letter(ops, ack.seq)).is_open
    await operator.close()


async def test_a_letter_of_payments_own_pointing_at_another_event_is_not_replayed(
    secured_broker: EmbeddedBroker,
) -> None:
    """Payment does react to InventoryReserved, so it may file letters about one: but replay
    republishes only the event at the sequence the letter names, and only when that event is
    the one the letter says (subject, id, body). A made-up order with a 99,999 total, pointed
    at a real InventoryReserved, is suspect and replays nothing."""
    operator = await prepared_streams(secured_broker)
    _, real = await a_real_inventory_reserved(secured_broker, "o-real")
    made_up = inventory_events.InventoryReserved(order_id="o-forged", customer_id="c-victim")
    made_up.total.amount_minor = 9_999_900
    envelope = envelope_for(made_up, aggregate_id="o-forged", correlation_id="o-forged")
    payment = await connect_as(secured_broker, "payment")
    try:
        await dlq.dead_letter(
            payment.jetstream(timeout=2.0),
            service="payment",
            subject=envelope.subject,
            headers=envelope.to_headers(),
            body=made_up.SerializeToString(),
            reason=dlq.RETRIES_EXHAUSTED,
            detail="gateway down",
            stream=real.stream,
            stream_seq=real.seq,
            deliveries=5,
        )
    finally:
        await payment.close()
    ops = operator.jetstream()
    (letter,) = await dlq.list_dead_letters(ops)
    assert letter.service == "payment" and letter.suspect
    assert any("is shop.inventory.v1.InventoryReserved.o-real" in w for w in letter.suspicions)
    assert any("body is not the body" in why for why in letter.suspicions)
    with pytest.raises(dlq.SuspectLetter, match="event id"):
        await dlq.replay_letter(ops, letter.seq)
    assert await stored(ops, "SHOP_INVENTORY") == 1, "nothing was republished"
    await operator.close()


async def test_a_genuine_letter_replays_the_event_its_producer_published(
    secured_broker: EmbeddedBroker,
) -> None:
    """Payment's own letter about a real InventoryReserved: replay publishes that event as
    inventory published it (body and ce-id), with the derived Nats-Msg-Id."""
    operator = await prepared_streams(secured_broker)
    envelope, real = await a_real_inventory_reserved(secured_broker, "o-1")
    ops = operator.jetstream()
    source = await ops.get_msg(real.stream, real.seq)
    payment = await connect_as(secured_broker, "payment")
    try:
        await dlq.dead_letter(
            payment.jetstream(timeout=2.0),
            service="payment",
            subject=source.subject,
            headers=source.headers,
            body=source.data,
            reason=dlq.RETRIES_EXHAUSTED,
            detail="gateway down",
            stream=real.stream,
            stream_seq=real.seq,
            deliveries=5,
        )
    finally:
        await payment.close()
    (letter,) = await dlq.list_dead_letters(ops)
    assert (letter.service, letter.suspect, letter.source_gone) == ("payment", False, "")

    msg_id = await dlq.replay_letter(ops, letter.seq, by="alice")

    assert msg_id == f"{envelope.event_id}:replay:{letter.seq}"
    copy = await ops.get_msg(real.stream, real.seq + 1)
    assert copy.subject == source.subject and copy.data == source.data
    assert copy.headers["ce-id"] == envelope.event_id
    assert copy.headers["Nats-Msg-Id"] == msg_id
    assert copy.headers[dlq.H_REPLAY_OF] == str(letter.seq)
    await operator.close()


async def test_a_dead_letter_stream_that_rewrites_subjects_makes_every_letter_suspect(
    secured_broker: EmbeddedBroker,
) -> None:
    """A service's user may create the dead-letter stream when it is absent (whoever starts
    first). Made by notification with a subject transform, it would store notification's
    letters under payment's subject; a letter's subject then proves nothing, so every letter
    in it is suspect and none is replayed, however well its other claims match."""
    operator = await connect_as(secured_broker, permissions.OPERATOR)
    ops = operator.jetstream()
    for context in ("shop.order", "shop.inventory", "shop.payment"):
        await ops.add_stream(context_stream_config(context, RuntimeSettings()))
    envelope, real = await a_real_inventory_reserved(secured_broker, "o-1")
    source = await ops.get_msg(real.stream, real.seq)
    notification = await connect_as(secured_broker, "notification")
    try:
        js = notification.jetstream(timeout=2.0)
        config = dlq_stream_config(RuntimeSettings())
        config.subject_transform = api.SubjectTransform(
            src="choreo.dlq.notification.>", dest="choreo.dlq.payment.>"
        )
        await js.add_stream(config)
        # Every claim matches payment's letter about that event, but for the subject.
        await js.publish(
            subjects.dlq_subject("notification", source.subject),
            source.data,
            headers=forged_letter_headers(
                envelope, service="payment", stream=real.stream, seq=real.seq
            ),
        )
    finally:
        await notification.close()
    (letter,) = await dlq.list_dead_letters(ops)
    assert letter.service == "payment", "stored under payment's subject by the transform"
    assert letter.suspect
    assert [why for why in letter.suspicions if "rewrites subjects" not in why] == []
    with pytest.raises(dlq.SuspectLetter, match="does not prove who filed it"):
        await dlq.replay_letter(ops, letter.seq)
    assert await stored(ops, "SHOP_INVENTORY") == 1, "nothing was republished"
    await operator.close()
