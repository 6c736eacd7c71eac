"""Value types shared by the services' domains: money, order lines and postal addresses.

Money is integer minor units plus an ISO 4217 code, never floats, so totals add up exactly.
Amounts are bounded by a signed 64-bit integer because that is what the Protobuf contracts
and Postgres ``BIGINT`` columns can carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

MAX_MINOR = 2**63 - 1

# A small explicit set: a currency we have never priced anything in is a client mistake,
# not something to accept and discover later in the payment gateway.
KNOWN_CURRENCIES = frozenset({"USD", "EUR", "GBP", "JPY", "CHF"})
# Digits of each known currency's minor unit (ISO 4217): what an amount in minor units means.
MINOR_UNIT_DIGITS = {"USD": 2, "EUR": 2, "GBP": 2, "JPY": 0, "CHF": 2}
NANOS_PER_UNIT = 1_000_000_000


def minor_to_decimal(amount_minor: int, currency: str) -> tuple[int, int]:
    """Minor units -> (whole units, billionths): 1050 USD -> (10, 500000000), 1050 JPY ->
    (1050, 0). The shape of shop.common.v2.Money."""
    per_unit = 10 ** MINOR_UNIT_DIGITS[currency]
    units, fraction = divmod(amount_minor, per_unit)
    return units, fraction * (NANOS_PER_UNIT // per_unit)


def decimal_to_minor(units: int, nanos: int, currency: str) -> int:
    """(whole units, billionths) -> minor units; ValueError for an unknown currency, a
    negative amount or a fraction finer than the currency's minor unit."""
    if currency not in MINOR_UNIT_DIGITS:
        raise ValueError(f"currency {currency!r} is not one of {sorted(MINOR_UNIT_DIGITS)}")
    if units < 0 or not 0 <= nanos < NANOS_PER_UNIT:
        raise ValueError(f"{units} units and {nanos} nanos is not a non-negative amount")
    per_unit = 10 ** MINOR_UNIT_DIGITS[currency]
    step = NANOS_PER_UNIT // per_unit
    if nanos % step:
        raise ValueError(f"{nanos} nanos is finer than the minor unit of {currency}")
    return units * per_unit + nanos // step


def is_currency_code(code: str) -> bool:
    return len(code) == 3 and code.isascii() and code.isalpha() and code.isupper()


def is_country_code(code: str) -> bool:
    """ISO 3166-1 alpha-2 shape: two uppercase ASCII letters."""
    return len(code) == 2 and code.isascii() and code.isalpha() and code.isupper()


@dataclass(frozen=True, slots=True)
class Money:
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int):
            raise TypeError(f"amount_minor must be an int, got {self.amount_minor!r}")
        if not 0 <= self.amount_minor <= MAX_MINOR:
            raise OverflowError(f"amount_minor {self.amount_minor} is outside 0..{MAX_MINOR}")
        if not is_currency_code(self.currency):
            raise ValueError(f"currency {self.currency!r} is not a 3-letter ISO 4217 code")

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    def __add__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def times(self, quantity: int) -> Money:
        return Money(self.amount_minor * quantity, self.currency)

    def _same_currency(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValueError(f"cannot combine {self.currency} with {other.currency}")

    def __str__(self) -> str:
        return f"{self.amount_minor} {self.currency} (minor units)"


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    quantity: int
    unit_price: Money

    @property
    def subtotal(self) -> Money:
        return self.unit_price.times(self.quantity)


@dataclass(frozen=True, slots=True)
class Address:
    recipient_name: str
    line1: str
    city: str
    postal_code: str
    country_code: str
    line2: str = ""

    def as_dict(self) -> dict[str, str]:
        """The fields by name (what ``dataclasses.asdict`` gives, at a fraction of its cost on
        the PlaceOrder path)."""
        return {
            "recipient_name": self.recipient_name,
            "line1": self.line1,
            "city": self.city,
            "postal_code": self.postal_code,
            "country_code": self.country_code,
            "line2": self.line2,
        }


def total_of(lines: tuple[Line, ...] | list[Line], currency: str) -> Money:
    """Sum of quantity * unit price; raises OverflowError past the 64-bit bound."""
    total = Money.zero(currency)
    for line in lines:
        total = total + line.subtotal
    return total


def to_iso(moment: datetime) -> str:
    """UTC, fixed width, so timestamps stored as text sort in time order on any database."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)
