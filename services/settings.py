"""Settings of the saga services beyond the runtime's: reference data and the fake externals.

Read from ``CHOREO_*`` variables like the runtime settings; failure rates and latencies of the
fake providers are here so load and chaos runs can turn them up without code changes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from choreo.errors import ConfigurationError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CATALOG = REPO_ROOT / "catalog" / "default.json"


@dataclass(frozen=True)
class SagaSettings:
    catalog_path: Path = DEFAULT_CATALOG
    data_dir: Path = Path("data")
    payment_failure_rate: float = 0.0
    payment_latency_ms: int = 0
    shipping_failure_rate: float = 0.0
    shipping_latency_ms: int = 0
    unserviceable_countries: tuple[str, ...] = ("AQ", "KP")
    seed: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SagaSettings:
        env = os.environ if environ is None else environ

        def number(key: str, default: float, kind: type = float) -> float:
            raw = env.get(key)
            if raw is None:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigurationError(f"{key}={raw!r} is not a {kind.__name__}") from None
            if value < 0:
                raise ConfigurationError(f"{key}={raw!r} must not be negative")
            return float(value)

        payment_rate = number("CHOREO_PAYMENT_FAILURE_RATE", 0.0)
        shipping_rate = number("CHOREO_SHIPPING_FAILURE_RATE", 0.0)
        for key, rate in (
            ("CHOREO_PAYMENT_FAILURE_RATE", payment_rate),
            ("CHOREO_SHIPPING_FAILURE_RATE", shipping_rate),
        ):
            if rate > 1:
                raise ConfigurationError(f"{key} must be a fraction between 0 and 1")
        countries = env.get("CHOREO_UNSERVICEABLE_COUNTRIES")
        seed = env.get("CHOREO_SEED")
        return cls(
            catalog_path=Path(env.get("CHOREO_CATALOG", str(DEFAULT_CATALOG))),
            data_dir=Path(env.get("CHOREO_DATA_DIR", "data")),
            payment_failure_rate=payment_rate,
            payment_latency_ms=int(number("CHOREO_PAYMENT_LATENCY_MS", 0, int)),
            shipping_failure_rate=shipping_rate,
            shipping_latency_ms=int(number("CHOREO_SHIPPING_LATENCY_MS", 0, int)),
            unserviceable_countries=(
                tuple(c.strip().upper() for c in countries.split(",") if c.strip())
                if countries is not None
                else cls.unserviceable_countries
            ),
            seed=int(seed) if seed else None,
        )

    @property
    def payment_ledger(self) -> Path:
        """The fake gateway's own ledger: outside the payment service's database on purpose."""
        return self.data_dir / "payment-gateway-ledger.db"

    @property
    def shipping_ledger(self) -> Path:
        return self.data_dir / "shipping-provider-ledger.db"
