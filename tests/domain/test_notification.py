"""Notification: one message per final state per order, on the customer's channel."""

from __future__ import annotations

from datetime import UTC, datetime

from services.catalog import Catalog
from services.notification import store
from services.notification.domain import (
    Channel,
    NotificationKind,
    choose_channel,
    order_cancelled,
    order_shipped,
)
from tests.domain.conftest import SqliteTx

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_email_is_the_default_channel(catalog: Catalog) -> None:
    assert choose_channel(catalog.customers["cust-alice"]) is Channel.EMAIL
    assert choose_channel(None) is Channel.EMAIL


def test_a_customer_who_prefers_sms_gets_an_sms(catalog: Catalog) -> None:
    assert choose_channel(catalog.customers["cust-bob"]) is Channel.SMS


def test_the_shipped_message_names_the_carrier_and_tracking_number() -> None:
    n = order_shipped("o1", "c1", "UPS", "UPS123", Channel.EMAIL)
    assert n.kind is NotificationKind.ORDER_SHIPPED
    assert "o1" in n.message and "UPS123" in n.message and "with UPS" in n.message
    # An OrderShipped from an order service older than its carrier field: no dangling "with".
    bare = order_shipped("o1", "c1", "", "T1", Channel.EMAIL).message
    assert bare == "Your order o1 has shipped. Tracking number: T1."


def test_the_cancelled_message_explains_the_reason_in_plain_words() -> None:
    n = order_cancelled("o1", "c1", "SHIPPING_FAILED", Channel.SMS, charged=True)
    assert n.kind is NotificationKind.ORDER_CANCELLED
    assert "cannot deliver" in n.message and "refunded" in n.message
    assert "problem" in order_cancelled("o1", "c1", "SOMETHING_NEW", Channel.SMS).message


def test_a_refund_is_mentioned_when_the_order_was_charged_whatever_the_reason() -> None:
    for reason in ("SHIPPING_FAILED", "PAYMENT_FAILED", "SOMETHING_NEW"):
        message = order_cancelled("o1", "c1", reason, Channel.EMAIL, charged=True).message
        assert "refunded to you in full" in message, reason


def test_a_cancellation_before_any_charge_never_mentions_a_refund() -> None:
    # Not even after a shipping failure: the reason alone says nothing about money taken.
    for reason in ("INVENTORY_UNAVAILABLE", "PAYMENT_FAILED", "SHIPPING_FAILED"):
        message = order_cancelled("o1", "c1", reason, Channel.EMAIL, charged=False).message
        assert "refund" not in message, reason
        assert "refund" not in order_cancelled("o1", "c1", reason, Channel.EMAIL).message


def test_the_notification_id_is_derived_from_order_and_kind() -> None:
    a = order_shipped("o1", "c1", "UPS", "T1", Channel.EMAIL)
    assert a.notification_id == order_shipped("o1", "c1", "DHL", "T2", Channel.SMS).notification_id
    assert a.notification_id != order_cancelled("o1", "c1", "x", Channel.EMAIL).notification_id


async def test_one_notification_per_final_state_per_order(tx: SqliteTx) -> None:
    await tx.migrate(store.SCHEMA)
    shipped = order_shipped("o1", "c1", "UPS", "T1", Channel.EMAIL)
    assert await store.record_notification(tx, shipped, NOW)
    assert not await store.record_notification(tx, shipped, NOW)
    assert await store.notifications_for(tx, "o1") == [shipped]
    assert await store.counts_per_order(tx) == {("o1", "ORDER_SHIPPED"): 1}
