"""The payment token is sealed for the payment service alone.

The sealing itself (choreo/sealing.py, services/payment_token.py), then the five services
in-process on a real nats-server: no byte of the order, inventory or dead-letter streams holds
the token, the gateway still charges it, and a payment service holding the wrong key fails the
payment with a dead letter that says why, and the saga compensates.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from choreo import dlq, sealing, subjects
from choreo.errors import ConfigurationError, PermanentError
from choreo.streamread import read_stream
from choreo.testing import wait_for
from services import payment_token
from services.order.domain import CancellationReason, OrderStatus
from services.settings import SagaSettings
from services.workload import SagaPath, request_for
from shop.order.v1 import order_service_pb2_grpc as order_grpc
from shop.payment.v1 import events_pb2 as pay
from tests.services import channel, emitted
from tests.services.saga_harness import Saga, all_released, saga

__all__ = ["saga"]  # the fixture

CANNOT_OPEN = "cannot be opened with this service's private key"


# --- the seal on its own ---


def test_a_sealed_token_opens_only_with_the_private_key_for_its_own_order() -> None:
    key = sealing.generate()
    sealed = payment_token.seal(key.sealing_key, "ord-1", "tok_visa_4242")
    assert sealed.startswith("sealed:v1:")
    assert "tok_visa_4242" not in sealed
    # A fresh ephemeral key every time: the same token never gives the same text twice.
    assert sealed != payment_token.seal(key.sealing_key, "ord-1", "tok_visa_4242")
    assert payment_token.open_token(key, "ord-1", sealed) == "tok_visa_4242"

    with pytest.raises(PermanentError, match=CANNOT_OPEN):
        payment_token.open_token(sealing.generate(), "ord-1", sealed)
    # Copied into another order's event, it does not open either.
    with pytest.raises(PermanentError, match=CANNOT_OPEN):
        payment_token.open_token(key, "ord-2", sealed)


@pytest.mark.parametrize(
    ("sealed", "why"),
    [
        ("tok_visa", "is not sealed"),
        ("sealed:v1:***", "not valid base64url"),
        ("sealed:v1:AAAA", "truncated"),
    ],
)
def test_a_token_that_is_not_a_whole_seal_is_refused_naming_why(sealed: str, why: str) -> None:
    with pytest.raises(sealing.UnsealError, match=why) as refused:
        payment_token.open_token(sealing.generate(), "ord-1", sealed)
    message = str(refused.value)
    assert "order ord-1" in message
    assert sealed.removeprefix(sealing.PREFIX) not in message  # neither token nor seal leaks


def test_an_altered_seal_does_not_open() -> None:
    key = sealing.generate()
    sealed = payment_token.seal(key.sealing_key, "ord-1", "tok_visa")
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(sealing.UnsealError, match=CANNOT_OPEN):
        payment_token.open_token(key, "ord-1", flipped)


def test_a_key_ring_opens_tokens_sealed_for_the_new_key_and_for_retired_ones() -> None:
    old, new = sealing.generate(), sealing.generate()
    ring = sealing.OpeningKeys((new, old))
    before = payment_token.seal(old.sealing_key, "ord-1", "tok_before")  # in flight
    after = payment_token.seal(new.sealing_key, "ord-2", "tok_after")
    assert payment_token.open_token(ring, "ord-1", before) == "tok_before"
    assert payment_token.open_token(ring, "ord-2", after) == "tok_after"
    # Once the old key is dropped, what was sealed for it no longer opens, and says so.
    with pytest.raises(sealing.UnsealError, match=CANNOT_OPEN):
        payment_token.open_token(sealing.OpeningKeys((new,)), "ord-1", before)
    # Neither key opens another order's token, nor one sealed for a third key.
    with pytest.raises(sealing.UnsealError, match="private 2 keys"):
        payment_token.open_token(ring, "ord-2", before)
    with pytest.raises(sealing.UnsealError, match="private 2 keys"):
        third = payment_token.seal(sealing.generate().sealing_key, "ord-3", "tok")
        payment_token.open_token(ring, "ord-3", third)
    with pytest.raises(ValueError, match="at least one key"):
        sealing.OpeningKeys(())


def test_a_rotation_through_the_settings_keeps_tokens_in_flight_payable(tmp_path: Path) -> None:
    old_private, old_public = tmp_path / "old" / "key.pem", tmp_path / "old" / "pub.pem"
    new_private, new_public = tmp_path / "new" / "key.pem", tmp_path / "new" / "pub.pem"
    sealing.write_keypair(old_private, old_public)
    sealing.write_keypair(new_private, new_public)
    before = SagaSettings.from_env({"CHOREO_PAYMENT_TOKEN_PUBLIC_KEY_FILE": str(old_public)})
    in_flight = payment_token.seal(payment_token.sealing_key(before), "ord-1", "tok_before")

    # Step 1: payment gets the new key and keeps the old one as retired.
    payment = SagaSettings.from_env(
        {
            "CHOREO_PAYMENT_TOKEN_PRIVATE_KEY_FILE": str(new_private),
            "CHOREO_PAYMENT_TOKEN_RETIRED_KEY_FILES": f" {old_private} , ",
        }
    )
    assert payment.payment_token_retired_key_files == (old_private,)
    # Step 2: the order service seals with the new public key.
    order = SagaSettings.from_env({"CHOREO_PAYMENT_TOKEN_PUBLIC_KEY_FILE": str(new_public)})
    fresh = payment_token.seal(payment_token.sealing_key(order), "ord-2", "tok_after")

    ring = payment_token.opening_key(payment)
    assert payment_token.open_token(ring, "ord-1", in_flight) == "tok_before"
    assert payment_token.open_token(ring, "ord-2", fresh) == "tok_after"
    # A retired key file that cannot be read names its setting.
    missing = SagaSettings(
        data_dir=tmp_path, payment_token_retired_key_files=(tmp_path / "gone.pem",)
    )
    with pytest.raises(ConfigurationError, match="CHOREO_PAYMENT_TOKEN_RETIRED_KEY_FILES"):
        payment_token.opening_key(missing)


def test_unconfigured_services_share_one_key_pair_in_the_data_folder(tmp_path: Path) -> None:
    saga = SagaSettings(data_dir=tmp_path)
    sealing_key = payment_token.sealing_key(saga)  # the order service starts first: it creates
    opening_key = payment_token.opening_key(saga)
    sealed = payment_token.seal(sealing_key, "ord-1", "tok_visa")
    assert payment_token.open_token(opening_key, "ord-1", sealed) == "tok_visa"
    private, public = payment_token.default_key_files(tmp_path)
    assert private.stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" not in public.read_bytes()
    # Started again, the services keep the pair (tokens in flight were sealed with it).
    again = payment_token.opening_key(saga)
    assert payment_token.open_token(again, "ord-1", sealed) == "tok_visa"


def test_configured_key_files_that_are_missing_or_wrong_name_the_setting(tmp_path: Path) -> None:
    missing = SagaSettings(data_dir=tmp_path, payment_token_private_key_file=tmp_path / "none.pem")
    with pytest.raises(ConfigurationError, match="CHOREO_PAYMENT_TOKEN_PRIVATE_KEY_FILE"):
        payment_token.opening_key(missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    wrong = SagaSettings(data_dir=tmp_path, payment_token_public_key_file=garbage)
    with pytest.raises(ConfigurationError, match="CHOREO_PAYMENT_TOKEN_PUBLIC_KEY_FILE"):
        payment_token.sealing_key(wrong)
    # Nothing was generated in the data folder for a deployment that names its files.
    assert not (tmp_path / "secrets").exists()


def test_settings_read_the_key_file_paths_from_the_environment(tmp_path: Path) -> None:
    saga = SagaSettings.from_env(
        {
            "CHOREO_PAYMENT_TOKEN_PUBLIC_KEY_FILE": str(tmp_path / "pub.pem"),
            "CHOREO_PAYMENT_TOKEN_PRIVATE_KEY_FILE": str(tmp_path / "key.pem"),
        }
    )
    assert saga.payment_token_public_key_file == tmp_path / "pub.pem"
    assert saga.payment_token_private_key_file == tmp_path / "key.pem"


# --- the five services ---


async def place_with_token(s: Saga, token: str) -> str:
    request = request_for(SagaPath.HAPPY, random.randrange(10**6), random.Random(3))
    request.payment_token = token
    async with channel(s.runtimes["order"].grpc_port) as ch:
        reply = await order_grpc.OrderServiceStub(ch).PlaceOrder(request)
    order_id: str = reply.order.order_id
    return order_id


async def ended(s: Saga, order_id: str, status: OrderStatus) -> None:
    async def reached() -> bool:
        order = await s.order(order_id)
        return order.status is status and order.customer_notified

    await wait_for(reached, timeout=20, what=f"order {order_id} {status} and notified")


async def raw_bytes(js: Any, *contexts: str) -> list[bytes]:
    """Every stored message of the contexts' streams and the dead-letter stream: headers and
    body as the broker keeps them."""
    found = []
    for stream in [*(subjects.stream_name(c) for c in contexts), subjects.DLQ_STREAM]:
        try:
            messages = await read_stream(js, stream)
        except Exception as exc:  # a stream nobody has published to yet does not exist
            if "not found" not in str(exc).lower():
                raise
            continue
        for m in messages:
            headers = "".join(f"{k}:{v}" for k, v in m.headers.items())
            found.append(m.subject.encode() + headers.encode() + m.data)
    return found


def record_tokens(s: Saga) -> list[str]:
    """The tokens the gateway is asked to charge."""
    gateway = s.gateway()
    charge = gateway.charge
    seen: list[str] = []

    async def recording(key: str, customer_id: str, amount: Any, token: str, **kw: Any) -> Any:
        seen.append(token)
        return await charge(key, customer_id, amount, token, **kw)

    setattr(gateway, "charge", recording)  # noqa: B010 (a method replaced on the instance)
    return seen


async def test_the_token_is_on_no_stream_yet_the_gateway_charges_it(saga: Saga, js: Any) -> None:
    await saga.start()
    seen = record_tokens(saga)
    token = f"tok_visa_{uuid.uuid4().hex}"
    order_id = await place_with_token(saga, token)

    await ended(saga, order_id, OrderStatus.SHIPPED)
    assert seen == [token]
    assert (await saga.payments()).charges == {order_id: 1}
    stored = await raw_bytes(js, "shop.order", "shop.inventory")
    # OrderCreated and InventoryReserved (at least) were read; none holds the token.
    assert len(stored) >= 2
    assert not [raw for raw in stored if token.encode() in raw]
    assert any(b"sealed:v1:" in raw for raw in stored)


async def test_a_payment_service_with_the_wrong_key_fails_the_payment_naming_why(
    saga: Saga, js: Any, tmp_path: Path
) -> None:
    other = tmp_path / "other-key.pem"
    sealing.write_keypair(other, tmp_path / "other-public.pem")
    saga.env[payment_token.PRIVATE_KEY_SETTING] = str(other)
    await saga.start()
    seen = record_tokens(saga)
    token = f"tok_visa_{uuid.uuid4().hex}"
    order_id = await place_with_token(saga, token)

    await ended(saga, order_id, OrderStatus.CANCELLED)
    order = await saga.order(order_id)
    assert order.cancellation_reason is CancellationReason.PAYMENT_FAILED
    (failed,) = await emitted(js, pay.PaymentFailed)
    assert CANNOT_OPEN in failed.detail
    assert seen == []  # the gateway was never asked
    assert (await saga.payments()).charges == {}

    async def released() -> bool:
        return all_released(await saga.stock())

    await wait_for(released, what="the reserved stock to be released")

    async def filed() -> bool:
        return len(await dlq.list_dead_letters(js)) == 1

    await wait_for(filed, what="the dead letter")
    (letter,) = await dlq.list_dead_letters(js)
    assert letter.reason == dlq.REJECTED
    assert CANNOT_OPEN in letter.detail
    assert letter.compensated
    # The dead letter keeps the event for 30 days: the token in it is still sealed.
    stored = await raw_bytes(js, "shop.order", "shop.inventory", "shop.payment")
    assert not [raw for raw in stored if token.encode() in raw]
