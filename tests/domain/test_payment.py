"""Payment: charge once per order, decline from real data, refund a completed charge once."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.catalog import Catalog
from services.payment import store
from services.payment.domain import (
    ChargeResult,
    DeclineReason,
    NoRefund,
    Payment,
    PaymentStatus,
    RefundDue,
    RefundResult,
    charge_key,
    decide_charge,
    decide_refund,
    payment_id_for,
    refund_key,
    refunded,
    should_charge,
)
from services.payment.gateway import (
    ChargeAlreadyRefunded,
    FakePaymentGateway,
    GatewayUnavailable,
    IdempotencyKeyReused,
    UnknownCharge,
)
from services.values import Money
from tests.domain.conftest import SqliteTx

Gateway = FakePaymentGateway

NOW = datetime(2026, 1, 1, tzinfo=UTC)
USD = "USD"


def usd(n: int) -> Money:
    return Money(n, USD)


def gateway(tmp_path: Path, failure_rate: float = 0.0, seed: int | None = None) -> Gateway:
    return FakePaymentGateway(
        tmp_path / "gateway.db",
        credit_limits={"low": 1000},
        default_credit_limit_minor=10_000,
        failure_rate=failure_rate,
        seed=seed,
    )


# --- decisions ---


def test_an_approved_charge_completes_the_payment() -> None:
    payment = decide_charge("o1", "c1", usd(500), ChargeResult("ch_1", True, usd(500)))
    assert payment.status is PaymentStatus.COMPLETED
    assert (payment.charge_id, payment.payment_id) == ("ch_1", payment_id_for("o1"))


def test_a_declined_charge_fails_the_payment_with_the_reason() -> None:
    result = ChargeResult("ch_1", False, usd(500), DeclineReason.CREDIT_LIMIT_EXCEEDED)
    payment = decide_charge("o1", "c1", usd(500), result)
    assert payment.status is PaymentStatus.FAILED
    assert payment.failure_reason == "CREDIT_LIMIT_EXCEEDED"


def test_an_order_is_charged_only_when_no_payment_is_recorded_yet() -> None:
    assert should_charge(None)
    recorded = decide_charge("o1", "c1", usd(1), ChargeResult("ch", False, usd(1)))
    assert not should_charge(recorded)


def completed() -> Payment:
    return decide_charge("o1", "c1", usd(500), ChargeResult("ch_1", True, usd(500)))


def test_a_completed_payment_is_refunded_with_a_key_derived_from_the_order() -> None:
    decision = decide_refund(completed())
    assert decision == RefundDue(completed(), refund_key("o1"))


def test_a_refund_for_an_order_never_charged_is_a_no_op() -> None:
    assert isinstance(decide_refund(None), NoRefund)


def test_a_declined_payment_is_not_refunded() -> None:
    declined = decide_charge("o1", "c1", usd(1), ChargeResult("ch", False, usd(1)))
    assert isinstance(decide_refund(declined), NoRefund)


def test_a_refunded_payment_is_not_refunded_again() -> None:
    once = refunded(completed(), RefundResult("re_1", "ch_1", usd(500)))
    assert (once.status, once.refund_id) == (PaymentStatus.REFUNDED, "re_1")
    assert isinstance(decide_refund(once), NoRefund)


def test_keys_are_stable_per_order() -> None:
    assert charge_key("o1") == charge_key("o1") != charge_key("o2")
    assert refund_key("o1") != charge_key("o1")


# --- the fake gateway, against its own SQLite ledger ---


async def test_same_key_gives_the_same_answer_and_never_a_second_charge(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    first = await gw.charge("k1", "c1", usd(500), "tok_ok", order_id="o1")
    again = await gw.charge("k1", "c1", usd(500), "tok_ok", order_id="o1")
    assert first == again and first.approved
    assert (await gw.ledger_counts()).charges == {"o1": 1}


async def test_the_ledger_survives_a_new_gateway_object_on_the_same_file(tmp_path: Path) -> None:
    first = await gateway(tmp_path).charge("k1", "c1", usd(500), "tok_ok", order_id="o1")
    again = await gateway(tmp_path).charge("k1", "c1", usd(500), "tok_ok", order_id="o1")
    assert first == again


async def test_concurrent_calls_with_one_key_charge_once(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    results = await asyncio.gather(
        *(gw.charge("k1", "c1", usd(5), "tok_ok", order_id="o1") for _ in range(8))
    )
    assert len({r.charge_id for r in results}) == 1
    assert (await gw.ledger_counts()).charges == {"o1": 1}


async def test_a_key_reused_for_a_different_charge_is_refused(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    await gw.charge("k1", "c1", usd(500), "tok_ok", order_id="o1")
    with pytest.raises(IdempotencyKeyReused):
        await gw.charge("k1", "c1", usd(600), "tok_ok", order_id="o1")


async def test_a_declined_token_is_declined(tmp_path: Path) -> None:
    result = await gateway(tmp_path).charge("k1", "c1", usd(5), "tok_declined_42", order_id="o1")
    assert (result.approved, result.decline_reason) == (False, DeclineReason.PAYMENT_DECLINED)


async def test_a_charge_over_the_customers_credit_limit_is_declined(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    assert (await gw.charge("k1", "low", usd(600), "tok_ok", order_id="o1")).approved
    second = await gw.charge("k2", "low", usd(600), "tok_ok", order_id="o2")
    assert second.decline_reason is DeclineReason.CREDIT_LIMIT_EXCEEDED
    counts = await gw.ledger_counts()
    assert (counts.charges, counts.declines) == ({"o1": 1}, {"o2": 1})


async def test_a_customer_not_listed_gets_the_default_limit(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    assert (await gw.charge("k1", "anyone", usd(10_000), "tok_ok", order_id="o1")).approved
    assert not (await gw.charge("k2", "anyone", usd(1), "tok_ok", order_id="o2")).approved


async def test_refunds_free_the_credit_they_used(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    charge = await gw.charge("k1", "low", usd(1000), "tok_ok", order_id="o1")
    await gw.refund("r1", charge.charge_id)
    assert (await gw.charge("k2", "low", usd(1000), "tok_ok", order_id="o2")).approved


async def test_a_ledger_from_before_the_balances_table_keeps_its_customers_credit(
    tmp_path: Path,
) -> None:
    # Charges and refunds written by an older gateway: the credit they used still counts.
    gw = gateway(tmp_path)
    kept = await gw.charge("k1", "low", usd(600), "tok_ok", order_id="o1")
    refunded = await gw.charge("k2", "low", usd(300), "tok_ok", order_id="o2")
    await gw.refund("r2", refunded.charge_id)
    with sqlite3.connect(tmp_path / "gateway.db") as conn:
        conn.execute("DROP TABLE balances")  # the older schema had none

    reopened = gateway(tmp_path)
    assert kept.approved
    over = await reopened.charge("k3", "low", usd(500), "tok_ok", order_id="o3")
    assert over.decline_reason is DeclineReason.CREDIT_LIMIT_EXCEEDED  # 600 + 500 > 1000
    assert (await reopened.charge("k4", "low", usd(400), "tok_ok", order_id="o4")).approved


async def test_another_currency_is_declined(tmp_path: Path) -> None:
    result = await gateway(tmp_path).charge("k1", "c1", Money(5, "EUR"), "tok", order_id="o1")
    assert result.decline_reason is DeclineReason.CURRENCY_NOT_SUPPORTED


async def test_a_refund_is_idempotent_and_happens_once_per_charge(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    charge = await gw.charge("k1", "c1", usd(500), "tok_ok", order_id="o1")
    first = await gw.refund("r1", charge.charge_id)
    assert await gw.refund("r1", charge.charge_id) == first
    assert first.amount == usd(500)
    with pytest.raises(ChargeAlreadyRefunded):
        await gw.refund("r2", charge.charge_id)
    assert (await gw.ledger_counts()).refunds == {"o1": 1}


async def test_refunding_an_unknown_or_declined_charge_is_refused(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    declined = await gw.charge("k1", "c1", usd(5), "tok_declined", order_id="o1")
    with pytest.raises(UnknownCharge):
        await gw.refund("r1", declined.charge_id)
    with pytest.raises(UnknownCharge):
        await gw.refund("r2", "ch_nope")


async def test_an_unavailable_gateway_is_transient_and_retrying_charges_once(
    tmp_path: Path,
) -> None:
    gw = gateway(tmp_path, failure_rate=0.5, seed=7)
    outcomes: list[ChargeResult | None] = []
    for _ in range(40):
        try:
            outcomes.append(await gw.charge("k1", "c1", usd(5), "tok_ok", order_id="o1"))
        except GatewayUnavailable:
            outcomes.append(None)
    assert None in outcomes and len({o.charge_id for o in outcomes if o}) == 1
    assert (await gw.ledger_counts()).charges == {"o1": 1}


async def test_failures_are_reproducible_with_a_seed(tmp_path: Path) -> None:
    async def run(name: str) -> list[bool]:
        gw = FakePaymentGateway(tmp_path / name, failure_rate=0.3, seed=1)
        seen = []
        for i in range(20):
            try:
                await gw.charge(f"k{i}", "c1", usd(1), "tok", order_id=f"o{i}")
                seen.append(True)
            except GatewayUnavailable:
                seen.append(False)
        return seen

    assert await run("a.db") == await run("b.db")


def test_a_failure_rate_outside_0_to_1_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        FakePaymentGateway(tmp_path / "g.db", failure_rate=1.5)


async def test_the_gateway_takes_limits_from_the_catalog(tmp_path: Path, catalog: Catalog) -> None:
    gw = FakePaymentGateway.from_catalog(tmp_path / "g.db", catalog)
    lamp = catalog.products["SKU-LAMP"].unit_price
    result = await gw.charge("k1", "cust-low-limit", lamp, "tok_ok", order_id="o1")
    assert result.decline_reason is DeclineReason.CREDIT_LIMIT_EXCEEDED


# --- store ---


async def test_a_payment_is_recorded_once_and_refunded_once(tmp_path: Path, tx: SqliteTx) -> None:
    await tx.migrate(store.SCHEMA)
    payment = completed()
    assert await store.insert_payment(tx, payment, NOW)
    assert not await store.insert_payment(tx, payment, NOW)
    assert await store.load_payment(tx, "o1") == payment
    assert await store.mark_refunded(tx, "o1", "re_1", NOW)
    assert not await store.mark_refunded(tx, "o1", "re_2", NOW)
    loaded = await store.load_payment(tx, "o1")
    assert loaded == refunded(payment, RefundResult("re_1", "ch_1", usd(500)))
    assert await store.list_payments(tx, customer_id="c1") == [loaded]
    assert await store.load_payment(tx, "nope") is None
