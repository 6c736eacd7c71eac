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


ORDER_CREATED_VERSIONS = (1, 2)


def _order_created_versions(raw: str | None) -> tuple[int, ...]:
    """``CHOREO_ORDER_CREATED_VERSIONS``: "1", "2" or "1,2" (default "1")."""
    if raw is None:
        return SagaSettings.order_created_versions
    tokens = [token.strip().removeprefix("v") for token in raw.split(",") if token.strip()]
    if not tokens or not all(t.isdigit() and int(t) in ORDER_CREATED_VERSIONS for t in tokens):
        raise ConfigurationError(
            f"CHOREO_ORDER_CREATED_VERSIONS={raw!r}: list the OrderCreated versions to publish,"
            ' from 1 and 2, comma-separated: "1", "1,2" (migration window) or "2"'
        )
    return tuple(sorted({int(t) for t in tokens}))


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
    # Every saga ends: an order not final this long after it was placed is cancelled (and the
    # steps compensate). Well above one step's retry budget (RuntimeSettings.retry_budget_s).
    saga_deadline_s: float = 300.0
    deadline_scan_interval_s: float = 5.0
    # The payment token's key files (services/payment_token.py); None: the data folder's pair.
    payment_token_public_key_file: Path | None = None
    payment_token_private_key_file: Path | None = None
    # Private keys being retired, still accepted while tokens sealed for them are in flight.
    payment_token_retired_key_files: tuple[Path, ...] = ()
    # Which schema versions of OrderCreated the order service publishes, oldest first: (1,)
    # before a migration, (1, 2) during its window (v1-only consumers keep working), (2,) once
    # v1 is retired. See docs/evolution.md.
    order_created_versions: tuple[int, ...] = (1,)

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
        deadline = number("CHOREO_SAGA_DEADLINE_S", cls.saga_deadline_s)
        scan = number("CHOREO_DEADLINE_SCAN_INTERVAL_S", cls.deadline_scan_interval_s)
        for key, value in (
            ("CHOREO_SAGA_DEADLINE_S", deadline),
            ("CHOREO_DEADLINE_SCAN_INTERVAL_S", scan),
        ):
            if value <= 0:
                raise ConfigurationError(f"{key} must be > 0 seconds")
        versions = _order_created_versions(env.get("CHOREO_ORDER_CREATED_VERSIONS"))
        countries = env.get("CHOREO_UNSERVICEABLE_COUNTRIES")
        seed = env.get("CHOREO_SEED")
        public_key = env.get("CHOREO_PAYMENT_TOKEN_PUBLIC_KEY_FILE")
        private_key = env.get("CHOREO_PAYMENT_TOKEN_PRIVATE_KEY_FILE")
        retired_keys = env.get("CHOREO_PAYMENT_TOKEN_RETIRED_KEY_FILES", "")
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
            saga_deadline_s=deadline,
            deadline_scan_interval_s=scan,
            payment_token_public_key_file=Path(public_key) if public_key else None,
            payment_token_private_key_file=Path(private_key) if private_key else None,
            payment_token_retired_key_files=tuple(
                Path(name.strip()) for name in retired_keys.split(",") if name.strip()
            ),
            order_created_versions=versions,
        )

    @property
    def payment_ledger(self) -> Path:
        """The fake gateway's own ledger: outside the payment service's database on purpose."""
        return self.data_dir / "payment-gateway-ledger.db"

    @property
    def shipping_ledger(self) -> Path:
        return self.data_dir / "shipping-provider-ledger.db"
