"""Any headers and any body: decoding gives an envelope and a message, or a PoisonMessage
naming the reason; never another exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from choreo import envelope as env
from choreo.errors import PoisonMessage
from choreo.service import default_registry
from choreo.testing import envelope_for
from shop.order.v1 import events_pb2 as order_events

REGISTRY = default_registry()
HEADER_NAMES = [
    env.H_ID,
    env.H_TYPE,
    env.H_SOURCE,
    env.H_TIME,
    env.H_CORRELATION_ID,
    env.H_CAUSATION_ID,
    env.H_CHAIN_DEPTH,
    env.H_SUBJECT,
    env.H_AGGREGATE_TYPE,
    env.H_AGGREGATE_VERSION,
]
VALID = envelope_for(order_events.OrderCreated(order_id="o-1"), aggregate_id="o-1").to_headers()
text = st.text(max_size=40)
header_value = st.one_of(
    text,
    st.sampled_from(list(VALID.values())),
    st.integers().map(str),
    st.sampled_from(
        [
            "shop.order.v1.OrderCreated",
            "shop.order.v9.OrderCreated",
            "choreo.x.v1.Nope",
            "not-a-type",
            "2026-11-25T10:00:00Z",
            "-1",
            "",
        ]
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), header_value, max_size=12),
    start_valid=st.booleans(),
    body=st.binary(max_size=200),
)
def test_decoding_any_input_is_a_result_or_a_named_poison(
    headers: dict[str, str], start_valid: bool, body: bytes
) -> None:
    candidate = {**VALID, **headers} if start_valid else headers
    try:
        envelope, message = env.decode(candidate, body, REGISTRY)
    except PoisonMessage as poison:
        assert poison.reason in {
            "missing_headers",
            "malformed_headers",
            "unknown_event_type",
            "unsupported_schema_version",
            "undecodable_body",
        }
        assert poison.detail
        return
    assert envelope.event_type == message.DESCRIPTOR.full_name or REGISTRY.knows(
        envelope.event_type
    )
    assert envelope.event_id == candidate[env.H_ID]


@settings(max_examples=200, deadline=None)
@given(order_id=text, version=st.integers(min_value=0, max_value=2**31), depth=st.integers(0, 99))
def test_an_envelope_survives_its_own_headers(order_id: str, version: int, depth: int) -> None:
    original = envelope_for(
        order_events.OrderCreated(order_id=order_id),
        aggregate_id=order_id or "x",
        version=version,
        chain_depth=depth,
    )
    assert env.Envelope.from_headers(original.to_headers()) == original
