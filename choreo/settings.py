"""Runtime settings: one frozen object, read from the environment, with local defaults.

Every field maps to ``CHOREO_<FIELD>`` in the environment; a wrong value fails at start-up
with the variable's name and what it expects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from choreo.errors import ConfigurationError


@dataclass(frozen=True)
class RuntimeSettings:
    service: str = "service"
    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = "sqlite:///data/service.db"
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0
    # Streams. The broker drops a re-sent Nats-Msg-Id inside duplicate_window; the inbox covers
    # everything after it, and inbox rows live exactly as long as the stream keeps messages.
    duplicate_window_s: float = 120.0
    max_age_s: float = 7 * 24 * 3600.0
    stream_replicas: int = 1
    # How long start-up waits for an unreachable or restarting broker before giving up.
    connect_wait_s: float = 30.0
    # Consumers.
    fetch_batch: int = 64
    fetch_timeout_s: float = 1.0
    ack_wait_s: float = 30.0
    max_deliveries: int = 6
    backoff_base_s: float = 0.2
    backoff_max_s: float = 10.0
    max_chain_depth: int = 32
    gap_hold_max: int = 20
    gap_hold_delay_s: float = 0.25
    # Relay.
    relay_sweep_interval_s: float = 1.0
    relay_batch: int = 256
    inbox_prune_interval_s: float = 300.0
    # Test-only switches that break delivery guarantees on purpose, to prove that the chaos
    # checks can fail. Never set in production.
    unsafe_disable_inbox: bool = False
    unsafe_ack_before_handling: bool = False

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> RuntimeSettings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f"CHOREO_{f.name.upper()}"
            if key in environ:
                values[f.name] = _parse(key, environ[key], type(getattr(cls(), f.name)))
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def with_(self, **changes: Any) -> RuntimeSettings:
        return replace(self, **changes)

    def validate(self) -> None:
        if self.duplicate_window_s <= 0:
            raise ConfigurationError("CHOREO_DUPLICATE_WINDOW_S must be > 0 seconds")
        if self.max_age_s < self.duplicate_window_s:
            raise ConfigurationError("CHOREO_MAX_AGE_S must be at least CHOREO_DUPLICATE_WINDOW_S")
        if self.max_deliveries < 1:
            raise ConfigurationError("CHOREO_MAX_DELIVERIES must be >= 1")
        if not 0 <= self.grpc_port <= 65535:
            raise ConfigurationError(f"CHOREO_GRPC_PORT {self.grpc_port} is not a port number")
        if self.fetch_batch < 1:
            raise ConfigurationError("CHOREO_FETCH_BATCH must be >= 1")

    def backoff(self, delivery: int) -> float:
        """Delay before redelivery number ``delivery + 1``: exponential, capped."""
        return float(min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, delivery - 1)))


def _parse(key: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise ConfigurationError(
            f"{key}={raw!r} is not a valid {kind.__name__}; fix or unset the variable"
        ) from None
