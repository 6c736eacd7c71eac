"""Finding 7 of issue 23: an InventoryReserved with a NUL character, published straight to the
bus (skipping the gRPC door), used to be charged, then fail its insert on Postgres, then fail
its give-up's insert too: an ALARM, no PaymentFailed, a saga that ended only at its deadline.
Now the event is checked against the contracts before the handler runs: nothing is charged,
the step gives up at once with the offending fields named, and its give-up records the payment
and emits PaymentFailed (the NUL fields cleared), on SQLite and on the local Postgres."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from choreo import dlq, sealing
from choreo.broker import EmbeddedBroker
from choreo.service import ServiceRuntime
from choreo.testing import wait_for
from services.payment.service import build
from services.settings import SagaSettings
from shop.payment.v1 import events_pb2 as pay
from tests.postgres import fresh_database
from tests.services import emitted, runtime_settings, wait_for_count
from tests.services.test_payment_service import TOKEN_KEY, deliver, gateway, reserved


@pytest.fixture(params=["sqlite", "postgres"])
async def payment(
    broker: EmbeddedBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[ServiceRuntime]:
    key_file = tmp_path / "payment-token-key.pem"
    sealing.write_keypair(key_file, tmp_path / "payment-token-public.pem", TOKEN_KEY)
    settings = runtime_settings("payment", broker, tmp_path)
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "postgres":
            url = await stack.enter_async_context(fresh_database("choreo_bus_door"))
            settings = settings.with_(database_url=url)
        saga = SagaSettings(data_dir=tmp_path, payment_token_private_key_file=key_file)
        runtime = ServiceRuntime(build(settings, saga), settings)
        await runtime.start()
        yield runtime
        await runtime.stop(grace_s=1.0)


async def test_a_nul_event_from_the_bus_is_a_dead_letter_with_payment_failed_and_no_charge(
    payment: ServiceRuntime, js: Any
) -> None:
    event = reserved(customer_id="cust-\x00alice")
    event.shipping_address.line1 = "1 Main\x00St"
    event.shipping_address.postal_code = "12345"
    await deliver(js, event)

    await wait_for_count(js, pay.PaymentFailed, 1)
    (failed,) = await emitted(js, pay.PaymentFailed)
    assert failed.order_id == event.order_id
    assert "\x00" not in failed.customer_id  # the NUL field is cleared, not passed on
    assert (await gateway(payment).ledger_counts()).charges == {}
    assert await emitted(js, pay.PaymentCompleted) == []

    async def filed() -> bool:
        return len(await dlq.list_dead_letters(js)) == 1

    await wait_for(filed, what="the give-up on record")
    (letter,) = await dlq.list_dead_letters(js)
    assert (letter.reason, letter.compensated, letter.alarm) == (dlq.REJECTED, True, False)
    assert "invalid_event" in letter.detail
    assert "customer_id: contains a NUL character" in letter.detail
    assert "shipping_address.line1" in letter.detail
    assert letter.deliveries == 1
