"""Least privilege on the bus: a real nats-server enforcing the permissions generated from the
choreography (the runtime's test contracts, tests/testkit: desk, stock and ledger). A service
cannot speak for another, and a client without credentials is shut out.
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
from tests import testkit
from tests.cli import choreo
from tests.testkit import desk_events, ledger_events, stock_events

pytestmark = pytest.mark.usefixtures("testkit_contracts")

SERVICE_NAMES = testkit.SERVICES
CREDENTIALS = permissions.generate_credentials([*SERVICE_NAMES, permissions.OPERATOR])
OPENED = "testkit.desk.v1.TicketOpened"
HELD = "testkit.stock.v1.ItemsHeld"


def test_each_service_publishes_only_its_own_context_and_dead_letters() -> None:
    perms = {p.user: p for p in permissions.system_permissions(SERVICE_NAMES)}
    stock = perms["stock"]
    event_subjects = [s for s in stock.publish if not s.startswith("$")]
    assert event_subjects == ["testkit.stock.>", "choreo.dlq.stock.>"]
    assert stock.subscribe == ("_INBOX_stock.>",)
    # Consumers are pinned, by stream and name, to the event types the choreography says
    # stock reacts to.
    creates = sorted(s for s in stock.publish if ".CONSUMER.DURABLE.CREATE." in s)
    assert creates == sorted(
        f"$JS.API.CONSUMER.DURABLE.CREATE.{subjects.stream_name(subjects.context_of(t))}."
        f"{subjects.durable_name('stock', t)}"
        for t in (OPENED, "testkit.ledger.v1.FundsRefused")
    )
    # Only the owner of a stream may create or change it.
    assert not any("STREAM.UPDATE.TESTKIT_DESK" in s for s in stock.publish)
    assert any("STREAM.UPDATE.TESTKIT_STOCK" in s for s in stock.publish)


def test_the_credentials_file_is_private_and_its_repr_hides_passwords(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "nats-credentials.json"
    permissions.write_credentials_file(path, CREDENTIALS)
    assert path.stat().st_mode & 0o777 == 0o600
    read = permissions.read_credentials(path, "ledger")
    assert read == CREDENTIALS["ledger"]
    assert read.password not in repr(read)
    with pytest.raises(permissions.ConfigurationError, match="no entry for user 'nobody'"):
        permissions.read_credentials(path, "nobody")


@pytest.fixture
async def secured_broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    config = permissions.authorization_config(
        permissions.system_permissions(SERVICE_NAMES), CREDENTIALS
    )
    assert CREDENTIALS["desk"].password not in config  # hashes only
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
    for context in testkit.CONTEXTS:
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
            user="stock",
            password="guessed",
            allow_reconnect=False,
            max_reconnect_attempts=0,
        )


async def test_a_service_publishing_another_contexts_event_is_refused(
    secured_broker: EmbeddedBroker,
) -> None:
    operator = await prepared_streams(secured_broker)
    errors: list[str] = []
    stock = await connect_as(secured_broker, "stock", errors)
    try:
        js = stock.jetstream(timeout=1.0)
        # Its own event is stored.
        own = stock_events.ItemsHeld(ticket_id="o-1")
        envelope = envelope_for(own, aggregate_id="o-1", correlation_id="o-1")
        ack = await js.publish(
            envelope.subject, own.SerializeToString(), headers=envelope.to_headers()
        )
        assert ack.stream == "TESTKIT_STOCK"
        # A ledger event is not: the broker refuses it and says so.
        forged = ledger_events.FundsCaptured(ticket_id="o-1", payment_id="p-1")
        envelope = envelope_for(forged, aggregate_id="p-1", correlation_id="o-1")
        with pytest.raises(Exception):  # noqa: B017 - the PubAck never comes: a timeout
            await js.publish(
                envelope.subject, forged.SerializeToString(), headers=envelope.to_headers()
            )
        await refused(errors)
        assert await stored(operator.jetstream(), "TESTKIT_LEDGER") == 0
    finally:
        await stock.close()
        await operator.close()


async def test_a_forged_items_held_from_outside_is_refused(
    secured_broker: EmbeddedBroker,
) -> None:
    """The ledger charges on ItemsHeld: only stock may publish one."""
    operator = await prepared_streams(secured_broker)
    errors: list[str] = []
    ledger = await connect_as(secured_broker, "ledger", errors)
    try:
        forged = stock_events.ItemsHeld(ticket_id="o-forged")
        envelope = envelope_for(forged, aggregate_id="o-forged", correlation_id="o-forged")
        await ledger.publish(envelope.subject, forged.SerializeToString(), headers=None)
        await ledger.flush()
        await refused(errors)
        assert await stored(operator.jetstream(), "TESTKIT_STOCK") == 0
    finally:
        await ledger.close()
        await operator.close()


async def test_a_service_consumes_only_what_it_reacts_to(secured_broker: EmbeddedBroker) -> None:
    operator = await prepared_streams(secured_broker)
    errors: list[str] = []
    stock = await connect_as(secured_broker, "stock", errors)
    try:
        js = stock.jetstream(timeout=2.0)
        opened = desk_events.TicketOpened(ticket_id="o-2")
        envelope = envelope_for(opened, aggregate_id="o-2", correlation_id="o-2")
        await operator.jetstream().publish(
            envelope.subject, opened.SerializeToString(), headers=envelope.to_headers()
        )
        trigger = OPENED
        durable = subjects.durable_name("stock", trigger)
        config = api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            filter_subject=subjects.event_type_filter(trigger),
        )
        await js.add_consumer("TESTKIT_DESK", config)
        sub = await js.pull_subscribe_bind(durable=durable, stream="TESTKIT_DESK")
        (msg,) = await sub.fetch(1, timeout=2.0)
        assert msg.headers["ce-id"] == envelope.event_id
        await msg.ack_sync(timeout=2.0)
        # A durable that is not stock's own is refused, on a stream it reads or not.
        sneaky = api.ConsumerConfig(
            durable_name=subjects.durable_name("stock", "testkit.desk.v1.TicketAccepted"),
            ack_policy=api.AckPolicy.EXPLICIT,
            filter_subject="testkit.desk.v1.TicketAccepted.>",
        )
        with pytest.raises(Exception):  # noqa: B017 - no reply is allowed through: a timeout
            await js.add_consumer("TESTKIT_DESK", sneaky)
        await refused(errors)
        errors.clear()
        spy = api.ConsumerConfig(durable_name="spy", ack_policy=api.AckPolicy.NONE)
        with pytest.raises(Exception):  # noqa: B017
            await js.add_consumer("TESTKIT_LEDGER", spy)
        assert not await operator.jetstream().consumers_info("TESTKIT_LEDGER")
    finally:
        await stock.close()
        await operator.close()


# --- dead letters: a letter speaks only for the service whose user filed it -----------------


def credentials_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets" / "nats-credentials.json"
    permissions.write_credentials_file(path, CREDENTIALS)
    return path


def operator_cli(broker: EmbeddedBroker, creds: Path, *args: str) -> Any:
    """``choreo ARGS`` as the operator (its password from the credentials file, by path)."""
    return choreo(
        *args,
        "--nats-url",
        broker.url,
        CHOREO_NATS_CREDENTIALS_FILE=str(creds),
        CHOREO_CONTRACTS=testkit.PACKAGE,  # the test contracts, beside any installed ones
    )


async def a_real_items_held(broker: EmbeddedBroker, ticket_id: str) -> tuple[Any, Any]:
    """ItemsHeld for ``ticket_id``, published by stock's own user; (envelope, ack)."""
    stock = await connect_as(broker, "stock")
    try:
        event = stock_events.ItemsHeld(
            ticket_id=ticket_id, hold_id=f"h-{ticket_id}", customer_id="c-real"
        )
        envelope = envelope_for(event, aggregate_id=ticket_id, correlation_id=ticket_id)
        ack = await stock.jetstream(timeout=2.0).publish(
            envelope.subject, event.SerializeToString(), headers=envelope.to_headers()
        )
        return envelope, ack
    finally:
        await stock.close()


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


async def test_a_letter_forged_by_desk_for_the_ledger_is_refused_and_listed_as_suspect(
    secured_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Finding 2 of issue 23: desk's user (which does not react to ItemsHeld) files a letter
    claiming to be the ledger's give-up on an ItemsHeld for a made-up ticket, carrying a body of
    its own making. Under the ledger's dead-letter subject the broker refuses it; under its own
    the letter is desk's (the subject says so, whatever the header claims), suspect, and replay
    publishes nothing."""
    operator = await prepared_streams(secured_broker)
    creds = credentials_file(tmp_path)
    _, real = await a_real_items_held(secured_broker, "o-real")
    made_up = stock_events.ItemsHeld(
        ticket_id="o-forged", hold_id="h-forged", customer_id="c-victim"
    )
    made_up.total.amount_minor = 9_999_900
    envelope = envelope_for(made_up, aggregate_id="o-forged", correlation_id="o-forged")
    headers = forged_letter_headers(envelope, service="ledger", stream=real.stream, seq=real.seq)
    errors: list[str] = []
    desk = await connect_as(secured_broker, "desk", errors)
    try:
        js = desk.jetstream(timeout=1.0)
        # Under the ledger's subject: refused by the broker.
        with pytest.raises(Exception):  # noqa: B017 - the PubAck never comes: a timeout
            await js.publish(
                subjects.dlq_subject("ledger", envelope.subject),
                made_up.SerializeToString(),
                headers=headers,
            )
        await refused(errors)
        assert await stored(operator.jetstream(), subjects.DLQ_STREAM) == 0
        # Under its own: stored, but it speaks for desk only.
        ack = await js.publish(
            subjects.dlq_subject("desk", envelope.subject),
            made_up.SerializeToString(),
            headers=headers,
        )
    finally:
        await desk.close()

    listed = operator_cli(secured_broker, creds, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (letter,) = json.loads(listed.stdout)
    assert letter["seq"] == ack.seq
    assert letter["service"] == "desk", "the service comes from the subject"
    assert letter["suspect"] is True
    assert any("claims the service 'ledger'" in why for why in letter["suspicions"])
    assert any(f"desk does not subscribe to {HELD}" in why for why in letter["suspicions"])
    table = operator_cli(secured_broker, creds, "dlq", "list")
    assert "SUSPECT" in table.stdout and "desk" in table.stdout
    by_ledger = operator_cli(secured_broker, creds, "dlq", "list", "--json", "--service", "ledger")
    assert json.loads(by_ledger.stdout) == [], "nothing is the ledger's"

    replayed = operator_cli(secured_broker, creds, "dlq", "replay", str(ack.seq))
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert "suspect" in replayed.stderr and "claims the service 'ledger'" in replayed.stderr
    assert "Traceback" not in replayed.stderr
    ops = operator.jetstream()
    assert await stored(ops, "TESTKIT_STOCK") == 1, "nothing was republished"
    assert (await dlq.get_dead_letter(ops, ack.seq)).is_open
    await operator.close()


async def test_a_letter_of_the_ledgers_own_pointing_at_another_event_is_not_replayed(
    secured_broker: EmbeddedBroker,
) -> None:
    """The ledger does react to ItemsHeld, so it may file letters about one: but replay
    republishes only the event at the sequence the letter names, and only when that event is
    the one the letter says (subject, id, body). A made-up ticket with a 99,999 total, pointed
    at a real ItemsHeld, is suspect and replays nothing."""
    operator = await prepared_streams(secured_broker)
    _, real = await a_real_items_held(secured_broker, "o-real")
    made_up = stock_events.ItemsHeld(ticket_id="o-forged", customer_id="c-victim")
    made_up.total.amount_minor = 9_999_900
    envelope = envelope_for(made_up, aggregate_id="o-forged", correlation_id="o-forged")
    ledger = await connect_as(secured_broker, "ledger")
    try:
        await dlq.dead_letter(
            ledger.jetstream(timeout=2.0),
            service="ledger",
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
        await ledger.close()
    ops = operator.jetstream()
    (letter,) = await dlq.list_dead_letters(ops)
    assert letter.service == "ledger" and letter.suspect
    assert any(f"is {HELD}.o-real" in w for w in letter.suspicions)
    assert any("body is not the body" in why for why in letter.suspicions)
    with pytest.raises(dlq.SuspectLetter, match="event id"):
        await dlq.replay_letter(ops, letter.seq)
    assert await stored(ops, "TESTKIT_STOCK") == 1, "nothing was republished"
    await operator.close()


async def test_a_genuine_letter_replays_the_event_its_producer_published(
    secured_broker: EmbeddedBroker,
) -> None:
    """The ledger's own letter about a real ItemsHeld: replay publishes that event as stock
    published it (body and ce-id), with the derived Nats-Msg-Id."""
    operator = await prepared_streams(secured_broker)
    envelope, real = await a_real_items_held(secured_broker, "o-1")
    ops = operator.jetstream()
    source = await ops.get_msg(real.stream, real.seq)
    ledger = await connect_as(secured_broker, "ledger")
    try:
        await dlq.dead_letter(
            ledger.jetstream(timeout=2.0),
            service="ledger",
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
        await ledger.close()
    (letter,) = await dlq.list_dead_letters(ops)
    assert (letter.service, letter.suspect, letter.source_gone) == ("ledger", False, "")

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
    first). Made by desk with a subject transform, it would store desk's letters under the
    ledger's subject; a letter's subject then proves nothing, so every letter in it is suspect
    and none is replayed, however well its other claims match."""
    operator = await connect_as(secured_broker, permissions.OPERATOR)
    ops = operator.jetstream()
    for context in testkit.CONTEXTS:
        await ops.add_stream(context_stream_config(context, RuntimeSettings()))
    envelope, real = await a_real_items_held(secured_broker, "o-1")
    source = await ops.get_msg(real.stream, real.seq)
    desk = await connect_as(secured_broker, "desk")
    try:
        js = desk.jetstream(timeout=2.0)
        config = dlq_stream_config(RuntimeSettings())
        config.subject_transform = api.SubjectTransform(
            src="choreo.dlq.desk.>", dest="choreo.dlq.ledger.>"
        )
        await js.add_stream(config)
        # Every claim matches the ledger's letter about that event, but for the subject.
        await js.publish(
            subjects.dlq_subject("desk", source.subject),
            source.data,
            headers=forged_letter_headers(
                envelope, service="ledger", stream=real.stream, seq=real.seq
            ),
        )
    finally:
        await desk.close()
    (letter,) = await dlq.list_dead_letters(ops)
    assert letter.service == "ledger", "stored under the ledger's subject by the transform"
    assert letter.suspect
    assert [why for why in letter.suspicions if "rewrites subjects" not in why] == []
    with pytest.raises(dlq.SuspectLetter, match="does not prove who filed it"):
        await dlq.replay_letter(ops, letter.seq)
    assert await stored(ops, "TESTKIT_STOCK") == 1, "nothing was republished"
    await operator.close()
