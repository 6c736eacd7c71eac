"""A fake shipping provider: an external carrier API with its own ledger and idempotency keys.

Like the fake payment gateway, it writes its own SQLite file outside the caller's transaction,
answers a repeated key with the first answer (a booking, or the same refusal) and the booking's
*current* status (booked, or cancelled since), as a real carrier's "get booking" does, refuses
unserviceable destinations from data (country codes, placeholder postal codes), and can be slow
or unavailable for chaos runs; half of the injected outages lose the response after booking.
``ledger_counts`` is the referee for "no shipment is booked twice".
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from services.fake_external import FakeExternal
from services.shipping.domain import Booking, BookingStatus
from services.values import Address

DEFAULT_UNSERVICEABLE_COUNTRIES = frozenset({"AQ", "KP"})
UNSERVICEABLE_POSTAL_PREFIX = "00000"
_CARRIERS = {"US": "UPS", "CA": "UPS", "GB": "Royal Mail", "DE": "DHL", "FR": "La Poste"}
_DEFAULT_CARRIER = "DHL Express"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS bookings (
        idempotency_key TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        shipment_id TEXT,
        tracking_id TEXT,
        carrier TEXT,
        refused_reason TEXT,
        country_code TEXT NOT NULL,
        postal_code TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    # Cancelled booking keys: a booking under one is refused, so a booking still in flight when
    # its caller gave up (or the order hit its deadline) ships nothing.
    """CREATE TABLE IF NOT EXISTS cancellations (
        idempotency_key TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        shipment_id TEXT,
        created_at TEXT NOT NULL
    )""",
)

CANCELLED_REASON = "booking was cancelled before it was made"


class ProviderUnavailable(Exception):
    """Transient: the booking may or may not exist; retry with the same key."""


class Unserviceable(Exception):
    """The carrier cannot deliver there; retrying will not change that."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IdempotencyKeyReused(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ShippingLedgerCounts:
    bookings: dict[str, int] = field(default_factory=dict)  # shipments booked per order
    refusals: dict[str, int] = field(default_factory=dict)
    cancelled: dict[str, int] = field(default_factory=dict)  # booked shipments cancelled


def unserviceable_reason(destination: Address, countries: Iterable[str]) -> str | None:
    if destination.country_code in set(countries):
        return f"carrier does not deliver to country {destination.country_code}"
    if destination.postal_code.startswith(UNSERVICEABLE_POSTAL_PREFIX):
        return f"postal code {destination.postal_code} is not a deliverable address"
    return None


class FakeShippingProvider(FakeExternal):
    schema = _SCHEMA
    unavailable = ProviderUnavailable
    what = "shipping provider"

    def __init__(
        self,
        ledger_path: str | Path,
        *,
        unserviceable_countries: Iterable[str] = DEFAULT_UNSERVICEABLE_COUNTRIES,
        failure_rate: float = 0.0,
        latency_ms: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(ledger_path, failure_rate=failure_rate, latency_ms=latency_ms, seed=seed)
        self._countries = frozenset(unserviceable_countries)

    async def book(self, idempotency_key: str, order_id: str, destination: Address) -> Booking:
        lose_response = await self._maybe_fail()
        booking, reason = self._book(idempotency_key, order_id, destination)
        if lose_response:
            raise ProviderUnavailable("shipping provider timed out after accepting the request")
        if booking is None:
            raise Unserviceable(reason or "unserviceable")
        return booking

    async def cancel(self, idempotency_key: str, order_id: str) -> str:
        """Cancel a booking by its idempotency key, whether or not it was made: returns the
        cancelled shipment id ("" when nothing was booked); a later booking under the key is
        refused. Cancelling twice is the same as once."""
        lose_response = await self._maybe_fail()
        shipment_id = self._cancel(idempotency_key, order_id)
        if lose_response:
            raise ProviderUnavailable("shipping provider timed out after accepting the cancel")
        return shipment_id

    async def ledger_counts(self) -> ShippingLedgerCounts:
        return self._counts()

    def _book(
        self, key: str, order_id: str, destination: Address
    ) -> tuple[Booking | None, str | None]:
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT order_id, shipment_id, tracking_id, carrier, refused_reason"
                " FROM bookings WHERE idempotency_key = ?",
                (key,),
            ).fetchone()
            if row is not None:
                if row[0] != order_id:
                    raise IdempotencyKeyReused(f"key {key!r} was used for order {row[0]!r}")
                if not row[1]:
                    return None, row[4]
                cancelled = conn.execute(
                    "SELECT 1 FROM cancellations WHERE idempotency_key = ?", (key,)
                ).fetchone()
                status = BookingStatus.CANCELLED if cancelled else BookingStatus.BOOKED
                return Booking(row[1], row[2], row[3], status), row[4]
            if conn.execute(
                "SELECT 1 FROM cancellations WHERE idempotency_key = ?", (key,)
            ).fetchone():
                return None, CANCELLED_REASON
            reason = unserviceable_reason(destination, self._countries)
            booking = None if reason else self._new_booking(destination)
            conn.execute(
                "INSERT INTO bookings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    order_id,
                    booking.shipment_id if booking else None,
                    booking.tracking_id if booking else None,
                    booking.carrier if booking else None,
                    reason,
                    destination.country_code,
                    destination.postal_code,
                    datetime.now(UTC).isoformat(timespec="microseconds"),
                ),
            )
            conn.execute("COMMIT")
            return booking, reason

    def _cancel(self, key: str, order_id: str) -> str:
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT shipment_id FROM bookings WHERE idempotency_key = ?", (key,)
            ).fetchone()
            shipment_id = row[0] if row and row[0] else ""
            conn.execute(
                "INSERT INTO cancellations VALUES (?, ?, ?, ?)"
                " ON CONFLICT (idempotency_key) DO NOTHING",
                (key, order_id, shipment_id or None, datetime.now(UTC).isoformat()),
            )
            conn.execute("COMMIT")
            return shipment_id

    def _new_booking(self, destination: Address) -> Booking:
        carrier = _CARRIERS.get(destination.country_code, _DEFAULT_CARRIER)
        ident = uuid.uuid4()
        prefix = "".join(c for c in carrier.upper() if c.isalpha())[:3]
        return Booking(f"shp_{ident.hex}", f"{prefix}{ident.int % 10**12:012d}", carrier)

    def _counts(self) -> ShippingLedgerCounts:
        with self._snapshot() as conn:
            counts = ShippingLedgerCounts()
            for order_id, ok, n in conn.execute(
                "SELECT order_id, shipment_id IS NOT NULL, COUNT(*) FROM bookings"
                " GROUP BY order_id, shipment_id IS NOT NULL"
            ):
                (counts.bookings if ok else counts.refusals)[order_id] = n
            for order_id, n in conn.execute(
                "SELECT order_id, COUNT(*) FROM cancellations WHERE shipment_id IS NOT NULL"
                " GROUP BY order_id"
            ):
                counts.cancelled[order_id] = n
            return counts
