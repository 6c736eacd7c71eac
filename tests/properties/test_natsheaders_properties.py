"""choreo.natsheaders gives what nats-py 2.16 gives, on any block: the fast path's result, or
None where nats-py's own code must run."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.errors import BadHeaderError

from choreo import natsheaders
from choreo.envelope import Envelope
from choreo.natsconn import RuntimeClient
from choreo.testing import envelope_for
from shop.order.v1 import events_pb2 as order_events

# Names: tokens mostly, and now and then a character nats-py refuses or skips.
names = st.one_of(
    st.from_regex(r"[A-Za-z][A-Za-z0-9\-_.]{0,20}", fullmatch=True),
    st.text(alphabet="ab :\t\r\né/", min_size=0, max_size=6),
    st.just("ce-source"),
)
values = st.one_of(
    st.just("a\r\nce-source: forged"),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    st.text(max_size=12),  # any unicode, line breaks and control characters included
)


class Captured(Client):
    """A client that keeps the command it would send instead of sending it."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    async def _send_command(self, cmd: bytes, priority: bool = False) -> None:
        self.sent.append(cmd)


class CapturedRuntime(RuntimeClient, Captured):
    pass


def sent_by(client_class: type[Captured], headers: dict[str, str]) -> bytes | type[Exception]:
    client = client_class()

    async def publish() -> None:
        await client._send_publish("a.b", "", b"body", 4, headers)

    try:
        asyncio.run(publish())
    except BadHeaderError:
        return BadHeaderError
    (cmd,) = client.sent
    return cmd


def read_back(cmd: bytes) -> dict[str, str]:
    """What a subscriber's nats-py reads from a sent HPUB: the header block's lines."""
    match = re.match(rb"HPUB \S+ +(\d+) (\d+)\r\n", cmd)
    assert match is not None
    start = match.end()
    block = cmd[start : start + int(match.group(1))]
    parsed: dict[str, str] = Client._parse_header_lines(block[len(b"NATS/1.0\r\n") :])
    return parsed


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(names, values, max_size=8))
def test_a_published_block_reads_back_as_nats_py_s_own(headers: dict[str, str]) -> None:
    ours, theirs = sent_by(CapturedRuntime, headers), sent_by(Captured, headers)
    if theirs is BadHeaderError or ours is BadHeaderError:
        assert ours is theirs  # the same refusal, raised by nats-py's own path
        return
    assert ours == theirs  # byte for byte: a subscriber cannot tell them apart


def test_a_value_cannot_smuggle_a_header_line_in() -> None:
    headers = {"ce-type": "a\r\nce-source: forged"}
    assert natsheaders.encode_block(headers) is None
    sent = sent_by(CapturedRuntime, headers)
    assert isinstance(sent, bytes)
    assert read_back(sent) == {"ce-type": "a  ce-source: forged"}


@settings(max_examples=600, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(names, values).map(lambda kv: f"{kv[0]}:{kv[1]}"),
            st.tuples(names, values).map(lambda kv: f"{kv[0]}: {kv[1]}  "),
            st.text(max_size=10),
        ),
        max_size=8,
    ),
    st.booleans(),
)
def test_a_received_block_parses_as_nats_py_parses_it(lines: list[str], closed: bool) -> None:
    raw = "\r\n".join(lines).encode("utf-8", "surrogatepass")
    if closed:
        raw += b"\r\n\r\n"
    fast = natsheaders.parse_lines(raw)
    if fast is not None:  # None: nats-py's own parser runs, so there is nothing to compare
        assert fast == Client._parse_header_lines(raw)
    assert RuntimeClient._parse_header_lines(raw) == Client._parse_header_lines(raw)


def test_the_runtime_s_own_headers_take_the_fast_path_both_ways() -> None:
    """Not a fallback on every event: an envelope's headers are encoded and parsed by the
    fast path, and give back the envelope."""
    envelope = envelope_for(
        order_events.OrderCreated(order_id="o-1"),
        aggregate_id="o-1",
        source="order",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    headers = envelope.to_headers()
    block = natsheaders.encode_block(headers)
    assert block is not None
    parsed = natsheaders.parse_lines(block[len(b"NATS/1.0\r\n") :])
    assert parsed == headers
    assert Envelope.from_headers(parsed) == envelope


@pytest.mark.parametrize(
    "headers",
    [{"bad name": "x"}, {"": "x"}, {"ok": "line\r\nbreak"}, {"ok": "lone\nfeed"}],
)
def test_what_the_fast_path_refuses_goes_to_nats_py(headers: dict[str, Any]) -> None:
    assert natsheaders.encode_block(headers) is None
