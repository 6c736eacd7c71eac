"""Only the poison is dead-lettered: a message that kills its process on every delivery is
singled out and given up, while the messages delivered in the same batch (whose delivery count
the server raised with every crash) are handled, against a real nats-server and a real process
that SIGKILLs itself."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

from choreo import dlq
from choreo.broker import EmbeddedBroker
from choreo.order.v1 import events_pb2 as order_events
from choreo.testing import publish_event, wait_for
from tests.runtime import probe
from tests.runtime.probe_process import consumer_ready, exited, start_probe_process

POISON_CUSTOMER = "c-poison"
GOOD_SAME_AGGREGATE = ["o-1", "o-2", "o-3", "o-4"]  # queued behind the poison, in its group
GOOD_OTHER_AGGREGATES = ["o-5", "o-6"]


async def letters(js: Any) -> list[dlq.DeadLetter]:
    try:
        return await dlq.list_dead_letters(js)
    except Exception:
        return []


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


async def test_a_crash_looping_message_is_singled_out_and_its_batch_mates_are_handled(
    broker: EmbeddedBroker, js: Any, tmp_path: Path
) -> None:
    db = tmp_path / "probe.db"
    # A first, harmless process creates the durable consumer; with it stopped, the events
    # wait in the stream, so the crashing process pulls all of them in one batch.
    process = start_probe_process(broker, db)
    try:
        await wait_for(lambda: consumer_ready(js), what="probe consumer")
    finally:
        stop(process)
    await publish_event(
        js,
        order_events.OrderCreated(order_id="o-poison", customer_id=POISON_CUSTOMER),
        aggregate_id="shared",
    )
    for order_id in GOOD_SAME_AGGREGATE:
        await publish_event(
            js,
            order_events.OrderCreated(order_id=order_id, customer_id="c-1"),
            aggregate_id="shared",
        )
    for order_id in GOOD_OTHER_AGGREGATES:
        await publish_event(
            js,
            order_events.OrderCreated(order_id=order_id, customer_id="c-1"),
            aggregate_id=order_id,
        )
    good = GOOD_SAME_AGGREGATE + GOOD_OTHER_AGGREGATES

    async def settled() -> bool:
        return len(await letters(js)) >= 1 and set(probe.effect_counts(db)) >= set(good)

    env = {"CHOREO_CRASH_ON_CUSTOMER": POISON_CUSTOMER, "CHOREO_MAX_DELIVERIES": "2"}
    crashes = 0
    for _ in range(8):
        process = start_probe_process(broker, db, **env)
        try:

            async def over(running: subprocess.Popen[bytes] = process) -> bool:
                return await exited(running) or await settled()

            await wait_for(over, timeout=30, what="a crash, or every message settled")
            if process.poll() is not None:
                assert process.returncode == -signal.SIGKILL
                crashes += 1
                continue
            break
        finally:
            stop(process)

    # Killed in the batch, then twice when run alone; the fourth delivery is given up.
    assert crashes == 3
    (letter,) = await letters(js)
    assert order_events.OrderCreated.FromString(letter.body).order_id == "o-poison"
    assert letter.reason == dlq.DELIVERY_LIMIT
    assert letter.alarm  # the probe has no give-up handler
    assert "handled alone 2 time(s), each time without an outcome" in letter.detail
    # Every batch-mate was handled, once, though the server delivered it up to four times.
    assert probe.effect_counts(db) == {order_id: 1 for order_id in good}
