"""Dead letters as a workflow, on a real nats-server: list with filters and full detail, show
one with its decoded payload, replay (one, or many by filter) and discard, each recorded so the
letter is no longer open; bad input is a message and a non-zero exit, never a traceback."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from choreo import dlq, subjects
from choreo.broker import EmbeddedBroker
from choreo.settings import RuntimeSettings
from choreo.streams import ensure_streams
from choreo.testing import envelope_for, wait_for
from shop.order.v1 import events_pb2 as order_events
from shop.payment.v1 import events_pb2 as payment_events
from tests.cli import choreo

LONG_DETAIL = "card processor said: " + "declined because the issuer is unreachable; " * 5


async def file_letter(
    js: Any, message: Any, order_id: str, *, service: str, reason: str, detail: str
) -> None:
    """A real event on its stream, then dead-lettered by ``service`` as a consumer would."""
    envelope = envelope_for(message, aggregate_id=order_id, correlation_id=order_id)
    headers = envelope.to_headers()
    body = message.SerializeToString()
    stored = await js.publish(envelope.subject, body, headers=headers)
    await dlq.dead_letter(
        js,
        service=service,
        subject=envelope.subject,
        headers=headers,
        body=body,
        reason=reason,
        detail=detail,
        stream=stored.stream,
        stream_seq=stored.seq,
        deliveries=5,
    )


@pytest.fixture
async def letters(broker: EmbeddedBroker, js: Any) -> str:
    """Three letters: inventory gave up on o-1's OrderCreated (long detail), shipping on o-2's
    PaymentCompleted, inventory rejected o-3's OrderCreated."""
    await ensure_streams(js, RuntimeSettings(service="order", nats_url=broker.url))
    created = order_events.OrderCreated(order_id="o-1", customer_id="c-42")
    await file_letter(
        js,
        created,
        "o-1",
        service="inventory",
        reason=dlq.RETRIES_EXHAUSTED,
        detail=LONG_DETAIL,
    )
    authorized = payment_events.PaymentCompleted(order_id="o-2")
    await file_letter(
        js,
        authorized,
        "o-2",
        service="shipping",
        reason=dlq.RETRIES_EXHAUSTED,
        detail="carrier down",
    )
    created3 = order_events.OrderCreated(order_id="o-3", customer_id="c-7")
    await file_letter(
        js, created3, "o-3", service="inventory", reason=dlq.REJECTED, detail="bad sku"
    )
    return broker.url


def listed(url: str, *args: str) -> list[dict[str, Any]]:
    result = choreo("dlq", "list", "--json", "--nats-url", url, *args)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def seqs(url: str, *args: str) -> list[int]:
    return [letter["seq"] for letter in listed(url, *args)]


async def test_list_filters_and_shows_the_whole_detail(letters: str) -> None:
    url = letters
    assert seqs(url) == [1, 2, 3]
    assert seqs(url, "--service", "inventory") == [1, 3]
    assert seqs(url, "--service", "shipping") == [2]
    assert seqs(url, "--event", "OrderCreated") == [1, 3]
    assert seqs(url, "--event", "shop.payment.v1.PaymentCompleted") == [2]
    assert seqs(url, "--reason", dlq.REJECTED) == [3]
    assert seqs(url, "--order", "o-2") == [2]
    assert seqs(url, "--order", "o-2", "--service", "inventory") == []
    assert seqs(url, "--since", "10m") == [1, 2, 3]
    assert seqs(url, "--since", "2999-01-01T00:00") == []

    table = choreo("dlq", "list", "--nats-url", url)
    assert table.returncode == 0, table.stderr
    assert LONG_DETAIL.strip() in table.stdout, "the detail must not be cut"
    assert "3 open dead letter(s)" in table.stdout

    bad = choreo("dlq", "list", "--since", "yesterday", "--nats-url", url)
    assert bad.returncode == 2 and "30m, 2h or 7d" in bad.stderr
    assert "Traceback" not in bad.stderr


async def test_show_prints_headers_reason_error_and_the_decoded_payload(letters: str) -> None:
    shown = choreo("dlq", "show", "1", "--nats-url", letters)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "dead letter 1: open" in out
    assert dlq.RETRIES_EXHAUSTED in out and LONG_DETAIL.strip() in out
    assert "ce-type: shop.order.v1.OrderCreated" in out
    assert "ce-correlationid: o-1" in out
    payload = json.loads(
        out[out.index("payload (shop.order.v1.OrderCreated):") :].split("\n", 1)[1]
    )
    assert payload["order_id"] == "o-1" and payload["customer_id"] == "c-42"

    as_json = json.loads(choreo("dlq", "show", "1", "--json", "--nats-url", letters).stdout)
    assert as_json["payload"]["customer_id"] == "c-42"
    assert as_json["headers"][dlq.H_SERVICE] == "inventory"
    assert as_json["service"] == "inventory" and as_json["suspect"] is False
    assert as_json["status"] == "open"


async def test_replay_closes_the_letter_and_records_who(letters: str, js: Any) -> None:
    url = letters
    stream = subjects.stream_name("shop.order")
    before = (await js.stream_info(stream)).state.messages

    replayed = choreo(
        "dlq", "replay", "1", "--nats-url", url, "--note", "issuer back", CHOREO_OPERATOR="alice"
    )
    assert replayed.returncode == 0, replayed.stderr
    assert (await js.stream_info(stream)).state.messages == before + 1, "the event went back"

    assert seqs(url) == [2, 3], "a replayed letter is no longer open"
    every = {letter["seq"]: letter for letter in listed(url, "--all")}
    assert every[1]["status"] == dlq.REPLAYED
    assert every[1]["resolution"]["by"] == "alice"
    assert every[1]["resolution"]["note"] == "issuer back"
    assert every[1]["resolution"]["replay_msg_id"].endswith(":replay:1")
    table = choreo("dlq", "list", "--all", "--nats-url", url).stdout
    assert "[replayed by alice at " in table

    again = choreo("dlq", "replay", "1", "--nats-url", url)
    assert again.returncode == 1
    assert "already replayed by alice" in again.stderr and "Traceback" not in again.stderr
    assert (await js.stream_info(stream)).state.messages == before + 1, "nothing sent twice"


async def test_discard_needs_a_reason_and_closes_the_letter(letters: str) -> None:
    url = letters
    missing = choreo("dlq", "discard", "3", "--nats-url", url)
    assert missing.returncode == 2 and "--reason" in missing.stderr
    assert seqs(url) == [1, 2, 3], "a refused command changes nothing"

    done = choreo("dlq", "discard", "3", "--reason", "test order", "--by", "bob", "--nats-url", url)
    assert done.returncode == 0, done.stderr
    assert "discarded by bob" in done.stdout
    assert seqs(url) == [1, 2]
    resolution = {x["seq"]: x for x in listed(url, "--all")}[3]["resolution"]
    assert resolution["action"] == dlq.DISCARDED and resolution["note"] == "test order"

    for command in (["replay", "3"], ["discard", "3", "--reason", "again"]):
        refused = choreo("dlq", *command, "--nats-url", url)
        assert refused.returncode == 1 and "already discarded by bob" in refused.stderr
    shown = choreo("dlq", "show", "3", "--nats-url", url).stdout
    assert "dead letter 3: discarded by bob" in shown


async def test_unknown_sequences_and_bad_combinations_are_messages(letters: str) -> None:
    for command in (["replay", "99"], ["discard", "99", "--reason", "x"], ["show", "99"]):
        result = choreo("dlq", *command, "--nats-url", letters)
        assert result.returncode == 1, command
        assert "no dead letter 99" in result.stderr and "Traceback" not in result.stderr
    for command in (["replay"], ["replay", "1", "--all"]):
        result = choreo("dlq", *command, "--nats-url", letters)
        assert result.returncode == 2 and "--all" in result.stderr, command
    assert seqs(letters) == [1, 2, 3]


async def test_replay_all_by_filter_replays_only_the_matching_open_letters(letters: str) -> None:
    url = letters
    result = choreo("dlq", "replay", "--all", "--event", "OrderCreated", "--nats-url", url)
    assert result.returncode == 0, result.stderr
    assert "replayed 2 of 2" in result.stdout
    assert "2/2" in result.stderr, "rich's progress bar counts on stderr"
    assert seqs(url) == [2]
    nothing = choreo("dlq", "replay", "--all", "--event", "OrderCreated", "--nats-url", url)
    assert nothing.returncode == 0 and "replayed 0 of 0" in nothing.stdout
    other = choreo("dlq", "replay", "--all", "--service", "inventory", "--nats-url", url)
    assert "replayed 0 of 0" in other.stdout and seqs(url) == [2], "inventory's were replayed"
    shipping = choreo("dlq", "replay", "--all", "--service", "shipping", "--nats-url", url)
    assert shipping.returncode == 0 and "replayed 1 of 1" in shipping.stdout
    assert seqs(url) == [] and len(listed(url, "--all")) == 3


async def test_the_library_replay_records_the_resolution_too(
    letters: str, js: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The web console calls dlq.replay(js, seq): the letter must be closed the same way.
    msg_id = await dlq.replay(js, 2)
    letter = await dlq.get_dead_letter(js, 2)
    assert letter.resolution is not None and letter.resolution.action == dlq.REPLAYED
    assert letter.resolution.replay_msg_id == msg_id
    with pytest.raises(dlq.AlreadyResolved):
        await dlq.replay(js, 2)
    # Two operators at once: exactly one of them resolves the letter.
    outcomes = await asyncio.gather(
        dlq.discard(js, 1, note="a", by="a"),
        dlq.discard(js, 1, note="b", by="b"),
        return_exceptions=True,
    )
    assert sum(isinstance(o, dlq.AlreadyResolved) for o in outcomes) == 1
    assert [x.seq for x in await dlq.find_dead_letters(js)] == [3]
    assert len(await dlq.list_dead_letters(js)) == 3, "the record of what went wrong stays"
    assert time.time() - letter.resolution.at < 60
    # Many letters: the resolutions are read in one go from the bucket's stream instead.
    one_by_one = [
        (x.seq, x.resolution) for x in await dlq.find_dead_letters(js, include_resolved=True)
    ]
    monkeypatch.setattr(dlq, "_LOOK_UP_ONE_BY_ONE", 0)
    in_one_go = [
        (x.seq, x.resolution) for x in await dlq.find_dead_letters(js, include_resolved=True)
    ]
    assert in_one_go == one_by_one and sum(r is not None for _, r in in_one_go) == 2


async def test_a_replay_from_the_web_console_closes_the_letter_too(letters: str, js: Any) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from choreo.console.server import build_app

    async with TestClient(TestServer(build_app(js))) as console:
        first = await console.post("/api/dead-letters/2/replay")
        assert first.status == 200, await first.text()
        assert seqs(letters) == [1, 3], "the console's replay is recorded like the CLI's"
        again = await console.post("/api/dead-letters/2/replay")
        assert again.status == 409
        assert "already replayed" in (await again.json())["error"]


async def test_a_normal_replay_publishes_the_event_as_its_producer_did(
    letters: str, js: Any
) -> None:
    """What goes back on the bus is the event read from its stream: same subject, body and
    ce-id as the original, the derived Nats-Msg-Id, and a header naming the letter."""
    letter = await dlq.get_dead_letter(js, 2)
    stream = subjects.stream_name("shop.payment")
    original_seq = int(letter.headers[dlq.H_STREAM_SEQ])
    original = await js.get_msg(stream, original_seq)

    replayed = choreo("dlq", "replay", "2", "--nats-url", letters)
    assert replayed.returncode == 0, replayed.stderr

    last = (await js.stream_info(stream)).state.last_seq
    copy = await js.get_msg(stream, last)
    assert last == original_seq + 1
    assert (copy.subject, copy.data) == (original.subject, original.data)
    assert copy.headers["ce-id"] == original.headers["ce-id"]
    assert copy.headers["Nats-Msg-Id"] == f"{original.headers['ce-id']}:replay:2"
    assert copy.headers[dlq.H_REPLAY_OF] == "2"
    assert not any(name.startswith("choreo-dlq-") for name in copy.headers)


async def test_replay_all_refuses_a_suspect_letter_and_replays_the_others(
    letters: str, js: Any
) -> None:
    """A letter filed under notification's subject that claims to be payment's, with a body
    of its own: listed under notification, as suspect; `replay --all` replays the genuine
    letters and names the suspect one it refused, with no traceback."""
    made_up = order_events.OrderCreated(order_id="o-forged", customer_id="c-victim")
    envelope = envelope_for(made_up, aggregate_id="o-forged", correlation_id="o-forged")
    await js.publish(
        subjects.dlq_subject("notification", envelope.subject),
        made_up.SerializeToString(),
        headers={
            **envelope.to_headers(),
            dlq.H_SERVICE: "payment",
            dlq.H_SUBJECT: envelope.subject,
            dlq.H_REASON: dlq.RETRIES_EXHAUSTED,
            dlq.H_STREAM: "SHOP_ORDER",
            dlq.H_STREAM_SEQ: "1",
        },
    )
    every = {letter["seq"]: letter for letter in listed(letters)}
    assert [every[seq]["suspect"] for seq in (1, 2, 3)] == [False, False, False]
    assert every[4]["service"] == "notification" and every[4]["suspect"] is True
    shown = choreo("dlq", "show", "4", "--nats-url", letters)
    assert "SUSPECT:" in shown.stdout and "claims the service 'payment'" in shown.stdout
    orders_before = (await js.stream_info("SHOP_ORDER")).state.messages

    result = choreo("dlq", "replay", "--all", "--nats-url", letters)

    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "replayed 3 of 4" in result.stdout
    assert "4: dead letter 4 is suspect" in result.stderr
    assert seqs(letters) == [4], "the suspect letter stays open, for a discard"
    assert (await js.stream_info("SHOP_ORDER")).state.messages == orders_before + 2


async def test_a_replay_after_the_source_event_aged_out_is_refused(
    broker: EmbeddedBroker, js: Any
) -> None:
    """Finding 10 of issue 23: inbox rows live as long as the stream keeps the event
    (max_age); once the event has aged out, a replay could be applied twice by the services
    that handled it, so it is refused, naming why, and the list says so."""
    settings = RuntimeSettings(
        service="order", nats_url=broker.url, max_age_s=1.0, duplicate_window_s=1.0
    )
    await ensure_streams(js, settings)
    created = order_events.OrderCreated(order_id="o-old", customer_id="c-1")
    await file_letter(
        js, created, "o-old", service="inventory", reason=dlq.RETRIES_EXHAUSTED, detail="x"
    )

    async def aged_out() -> bool:
        return int((await js.stream_info("SHOP_ORDER")).state.messages) == 0

    await wait_for(aged_out, timeout=15, what="the event to age out of SHOP_ORDER")

    replayed = choreo("dlq", "replay", "1", "--nats-url", broker.url)
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert "is gone from its stream" in replayed.stderr
    assert "inbox" in replayed.stderr and "max_age of 1s" in replayed.stderr
    assert "Traceback" not in replayed.stderr
    assert (await js.stream_info("SHOP_ORDER")).state.messages == 0, "nothing republished"
    (letter,) = listed(broker.url)
    assert letter["status"] == "open" and letter["suspect"] is False
    assert "is gone from its stream" in letter["source_gone"]
    table = choreo("dlq", "list", "--nats-url", broker.url).stdout
    assert "not replayable: its source event SHOP_ORDER #1 is gone" in table
