"""The continuous pull against a real nats-server: every message arrives once, in bulk, credit
is renewed after requests expire, and a stopped pull hands back what it had not handed out."""

from __future__ import annotations

import time
from typing import Any

import pytest
from nats.js import api

from choreo.pull import ContinuousPull
from choreo.testing import wait_for

STREAM = "PULLTEST"


async def _setup(js: Any, ack_wait: float = 30.0) -> None:
    await js.add_stream(name=STREAM, subjects=["pulltest.>"])
    await js.add_consumer(
        STREAM,
        api.ConsumerConfig(durable_name="d", ack_policy=api.AckPolicy.EXPLICIT, ack_wait=ack_wait),
    )


async def _drain(pull: ContinuousPull, want: int, timeout: float = 10.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        try:
            batch = await pull.next_batch(64, timeout=0.5)
        except TimeoutError:
            continue
        for msg in batch:
            await msg.ack()
        got += batch
    return got


async def test_every_message_arrives_once_and_in_stream_order(nc: Any, js: Any) -> None:
    await _setup(js)
    for i in range(150):
        await js.publish(f"pulltest.{i}", str(i).encode())
    pull = ContinuousPull(nc, js._prefix, STREAM, "d", batch=32, expires_s=5)
    await pull.start()
    first = await pull.next_batch(500, timeout=2)
    assert 1 <= len(first) <= 32  # never more in hand than one request's worth
    for msg in first:
        await msg.ack()
    rest = await _drain(pull, 150 - len(first))
    bodies = [int(m.data) for m in first + rest]
    assert bodies == list(range(150))
    with pytest.raises(TimeoutError):
        await pull.next_batch(64, timeout=0.3)
    await pull.stop()


async def test_credit_is_renewed_after_the_requests_expire(nc: Any, js: Any) -> None:
    await _setup(js)
    pull = ContinuousPull(nc, js._prefix, STREAM, "d", batch=8, expires_s=0.5)
    await pull.start()
    with pytest.raises(TimeoutError):
        await pull.next_batch(8, timeout=1.5)  # the first requests expire unused
    for i in range(5):
        await js.publish(f"pulltest.{i}", b"late")
    assert len(await _drain(pull, 5, timeout=5)) == 5
    await pull.stop()


async def test_a_stopped_pull_hands_back_what_it_had_not_handed_out(nc: Any, js: Any) -> None:
    # A long ack wait: only the nak on stop can make the messages come back this soon.
    await _setup(js, ack_wait=60)
    for i in range(10):
        await js.publish(f"pulltest.{i}", str(i).encode())
    first = ContinuousPull(nc, js._prefix, STREAM, "d", batch=16, expires_s=5)
    await first.start()
    taken = await first.next_batch(3, timeout=2)
    for msg in taken:
        await msg.ack()

    # Wait until the rest is in the first pull's hands (arrived, not handed out), so the stop
    # below has something to hand back: otherwise the test would pass without a nak.
    async def rest_arrived() -> bool:
        arrived = first._arrivals.qsize() if first._arrivals is not None else 0
        return arrived + len(first._ready) >= 10 - len(taken)

    await wait_for(rest_arrived, timeout=5, what="the rest delivered to the first pull")
    await first.stop()

    second = ContinuousPull(nc, js._prefix, STREAM, "d", batch=16, expires_s=5)
    await second.start()
    rest = await _drain(second, 10 - len(taken), timeout=5)
    assert sorted(int(m.data) for m in taken + rest) == list(range(10))
    await second.stop()
