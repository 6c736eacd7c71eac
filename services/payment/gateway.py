"""A fake payment gateway: an external system with its own ledger and idempotency keys.

It behaves like a real provider in the ways the saga depends on:

- its ledger is its own SQLite file, written outside the caller's transaction, so a payment
  service that crashes after a charge and before its commit has really charged;
- a repeated idempotency key returns the first answer and never charges twice, with the
  charge's *current* status (captured, voided or refunded), as a real provider's "retrieve the
  payment intent" does, so a caller that asks again learns that the money was since given back;
- it declines from real data: a declined card token, or a customer's net charges going over
  their credit limit;
- it can be slow or unavailable (``latency_ms``, ``failure_rate``, seeded) for chaos runs. Half
  of the injected outages happen *after* the charge is recorded, as a lost response, because
  that is the case idempotency keys exist for.

The ledger is also the referee for invariant 3: ``ledger_counts`` says how many charges and
refunds each order got.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from services.catalog import DEFAULT_CREDIT_LIMIT_MINOR, Catalog
from services.fake_external import FakeExternal
from services.payment.domain import (
    ChargeResult,
    ChargeStatus,
    DeclineReason,
    RefundResult,
    VoidResult,
)
from services.values import Money

DECLINED_TOKEN_PREFIX = "tok_declined"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS charges (
        charge_id TEXT PRIMARY KEY,
        idempotency_key TEXT NOT NULL UNIQUE,
        order_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        amount_minor INTEGER NOT NULL,
        currency TEXT NOT NULL,
        approved INTEGER NOT NULL,
        decline_reason TEXT,
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS refunds (
        refund_id TEXT PRIMARY KEY,
        idempotency_key TEXT NOT NULL UNIQUE,
        charge_id TEXT NOT NULL UNIQUE REFERENCES charges (charge_id),
        amount_minor INTEGER NOT NULL,
        created_at TEXT NOT NULL
    )""",
    # Voided charge keys: a charge under one is refused, as a real gateway refuses to capture a
    # cancelled payment intent, so a charge still in flight when its caller gave up takes nothing.
    """CREATE TABLE IF NOT EXISTS voids (
        idempotency_key TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    # Each customer's approved charges minus refunds, kept up to date with them, so the credit
    # check is one row read rather than a scan of the customer's history.
    """CREATE TABLE IF NOT EXISTS balances (
        customer_id TEXT PRIMARY KEY,
        net_minor INTEGER NOT NULL
    )""",
    # A ledger written before the balances table existed gets them from its history, once
    # (while the table is still empty; a refund belongs to exactly one charge).
    """INSERT INTO balances (customer_id, net_minor)
        SELECT c.customer_id, SUM(c.amount_minor) - COALESCE(SUM(r.amount_minor), 0)
        FROM charges c LEFT JOIN refunds r ON r.charge_id = c.charge_id
        WHERE c.approved = 1 AND NOT EXISTS (SELECT 1 FROM balances)
        GROUP BY c.customer_id""",
)


class GatewayUnavailable(Exception):
    """Transient: the call may or may not have gone through; retry with the same key."""


class IdempotencyKeyReused(Exception):
    """The key was first used for a different request; a caller bug, not worth retrying."""


class UnknownCharge(Exception):
    pass


class ChargeAlreadyRefunded(Exception):
    """A second refund of one charge under a new key: refused, as a real gateway would."""


@dataclass(frozen=True, slots=True)
class LedgerCounts:
    charges: dict[str, int] = field(default_factory=dict)  # approved charges per order
    declines: dict[str, int] = field(default_factory=dict)
    refunds: dict[str, int] = field(default_factory=dict)  # refunds per order


class FakePaymentGateway(FakeExternal):
    schema = _SCHEMA
    unavailable = GatewayUnavailable
    what = "payment gateway"

    def __init__(
        self,
        ledger_path: str | Path,
        *,
        currency: str = "USD",
        credit_limits: Mapping[str, int] | None = None,
        default_credit_limit_minor: int = DEFAULT_CREDIT_LIMIT_MINOR,
        failure_rate: float = 0.0,
        latency_ms: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(ledger_path, failure_rate=failure_rate, latency_ms=latency_ms, seed=seed)
        self._currency = currency
        self._limits = dict(credit_limits or {})
        self._default_limit = default_credit_limit_minor

    @classmethod
    def from_catalog(
        cls,
        ledger_path: str | Path,
        catalog: Catalog,
        *,
        failure_rate: float = 0.0,
        latency_ms: int = 0,
        seed: int | None = None,
    ) -> FakePaymentGateway:
        return cls(
            ledger_path,
            currency=catalog.currency,
            credit_limits=catalog.credit_limits(),
            default_credit_limit_minor=catalog.default_credit_limit_minor,
            failure_rate=failure_rate,
            latency_ms=latency_ms,
            seed=seed,
        )

    async def charge(
        self,
        idempotency_key: str,
        customer_id: str,
        amount: Money,
        payment_token: str,
        *,
        order_id: str,
    ) -> ChargeResult:
        lose_response = await self._maybe_fail()
        result = self._charge(idempotency_key, order_id, customer_id, amount, payment_token)
        if lose_response:
            raise GatewayUnavailable("payment gateway timed out after accepting the request")
        return result

    async def refund(self, idempotency_key: str, charge_id: str) -> RefundResult:
        lose_response = await self._maybe_fail()
        result = self._refund(idempotency_key, charge_id)
        if lose_response:
            raise GatewayUnavailable("payment gateway timed out after accepting the refund")
        return result

    async def void(self, charge_key: str, *, order_id: str) -> VoidResult:
        """Void a charge by its idempotency key: a charge taken under it is refunded (once,
        however often this is called), and a later charge under it is refused."""
        lose_response = await self._maybe_fail()
        result = self._void(charge_key, order_id)
        if lose_response:
            raise GatewayUnavailable("payment gateway timed out after accepting the void")
        return result

    @property
    def currency(self) -> str:
        return self._currency

    async def ledger_counts(self) -> LedgerCounts:
        return self._counts()

    def _charge(
        self, key: str, order_id: str, customer_id: str, amount: Money, token: str
    ) -> ChargeResult:
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT charge_id, order_id, customer_id, amount_minor, currency, approved,"
                " decline_reason FROM charges WHERE idempotency_key = ?",
                (key,),
            ).fetchone()
            if row is not None:
                if tuple(row[1:5]) != (order_id, customer_id, amount.amount_minor, amount.currency):
                    raise IdempotencyKeyReused(f"key {key!r} was used for a different charge")
                reason = DeclineReason(row[6]) if row[6] else None
                status, refund_id = _status(conn, row[0]) if row[5] else (ChargeStatus.CAPTURED, "")
                return ChargeResult(row[0], bool(row[5]), amount, reason, status, refund_id)
            if conn.execute("SELECT 1 FROM voids WHERE idempotency_key = ?", (key,)).fetchone():
                return ChargeResult("", False, amount, DeclineReason.VOIDED)
            reason = self._decline_reason(conn, customer_id, amount, token)
            charge_id = f"ch_{uuid.uuid4().hex}"
            conn.execute(
                "INSERT INTO charges VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    charge_id,
                    key,
                    order_id,
                    customer_id,
                    amount.amount_minor,
                    amount.currency,
                    int(reason is None),
                    reason.value if reason else None,
                    _now(),
                ),
            )
            if reason is None:
                _add_to_balance(conn, customer_id, amount.amount_minor)
            conn.execute("COMMIT")
            return ChargeResult(charge_id, reason is None, amount, reason)

    def _decline_reason(
        self, conn: sqlite3.Connection, customer_id: str, amount: Money, token: str
    ) -> DeclineReason | None:
        if token.startswith(DECLINED_TOKEN_PREFIX):
            return DeclineReason.PAYMENT_DECLINED
        if amount.currency != self._currency:
            return DeclineReason.CURRENCY_NOT_SUPPORTED
        row = conn.execute(
            "SELECT net_minor FROM balances WHERE customer_id = ?", (customer_id,)
        ).fetchone()
        net = row[0] if row else 0
        limit = self._limits.get(customer_id, self._default_limit)
        if net + amount.amount_minor > limit:
            return DeclineReason.CREDIT_LIMIT_EXCEEDED
        return None

    def _refund(self, key: str, charge_id: str) -> RefundResult:
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT refund_id, charge_id, amount_minor FROM refunds WHERE idempotency_key = ?",
                (key,),
            ).fetchone()
            charge = conn.execute(
                "SELECT amount_minor, currency, approved, customer_id FROM charges"
                " WHERE charge_id = ?",
                (charge_id,),
            ).fetchone()
            if charge is None or not charge[2]:
                raise UnknownCharge(f"no approved charge {charge_id!r}")
            amount = Money(charge[0], charge[1])
            if row is not None:
                if row[1] != charge_id:
                    raise IdempotencyKeyReused(f"key {key!r} was used to refund {row[1]!r}")
                return RefundResult(row[0], charge_id, amount)
            if conn.execute("SELECT 1 FROM refunds WHERE charge_id = ?", (charge_id,)).fetchone():
                raise ChargeAlreadyRefunded(f"charge {charge_id!r} is already refunded")
            refund_id = f"re_{uuid.uuid4().hex}"
            conn.execute(
                "INSERT INTO refunds VALUES (?, ?, ?, ?, ?)",
                (refund_id, key, charge_id, amount.amount_minor, _now()),
            )
            _add_to_balance(conn, charge[3], -amount.amount_minor)
            conn.execute("COMMIT")
            return RefundResult(refund_id, charge_id, amount)

    def _void(self, key: str, order_id: str) -> VoidResult:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO voids VALUES (?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
                (key, order_id, _now()),
            )
            charge = conn.execute(
                "SELECT charge_id, amount_minor, currency, approved, customer_id FROM charges"
                " WHERE idempotency_key = ?",
                (key,),
            ).fetchone()
            if charge is None or not charge[3]:
                conn.execute("COMMIT")
                return VoidResult(charge[0] if charge else "")
            charge_id, amount = charge[0], Money(charge[1], charge[2])
            # Refunded already (by a refund or an earlier void): that refund is the answer.
            refund = conn.execute(
                "SELECT refund_id FROM refunds WHERE charge_id = ?", (charge_id,)
            ).fetchone()
            if refund is None:
                refund = (f"re_{uuid.uuid4().hex}",)
                conn.execute(
                    "INSERT INTO refunds VALUES (?, ?, ?, ?, ?)",
                    (refund[0], f"void:{key}", charge_id, amount.amount_minor, _now()),
                )
                _add_to_balance(conn, charge[4], -amount.amount_minor)
            conn.execute("COMMIT")
            return VoidResult(charge_id, refund[0], amount)

    def _counts(self) -> LedgerCounts:
        with self._snapshot() as conn:
            counts = LedgerCounts()
            for order_id, approved, n in conn.execute(
                "SELECT order_id, approved, COUNT(*) FROM charges GROUP BY order_id, approved"
            ):
                (counts.charges if approved else counts.declines)[order_id] = n
            for order_id, n in conn.execute(
                "SELECT c.order_id, COUNT(*) FROM refunds r"
                " JOIN charges c ON c.charge_id = r.charge_id GROUP BY c.order_id"
            ):
                counts.refunds[order_id] = n
            return counts


def _status(conn: sqlite3.Connection, charge_id: str) -> tuple[ChargeStatus, str]:
    """An approved charge's status now, and the refund that gave it back (if any)."""
    refund = conn.execute(
        "SELECT refund_id, idempotency_key FROM refunds WHERE charge_id = ?", (charge_id,)
    ).fetchone()
    if refund is None:
        return ChargeStatus.CAPTURED, ""
    voided = str(refund[1]).startswith("void:")
    return (ChargeStatus.VOIDED if voided else ChargeStatus.REFUNDED), str(refund[0])


def _add_to_balance(conn: sqlite3.Connection, customer_id: str, delta_minor: int) -> None:
    conn.execute(
        "INSERT INTO balances (customer_id, net_minor) VALUES (?, ?) ON CONFLICT (customer_id)"
        " DO UPDATE SET net_minor = balances.net_minor + excluded.net_minor",
        (customer_id, delta_minor),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
