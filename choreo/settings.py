"""Runtime settings: one frozen object, read from the environment, with local defaults.

Every field maps to ``CHOREO_<FIELD>`` in the environment; a wrong value fails at start-up
with the variable's name and what it expects.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from choreo.errors import ConfigurationError


@dataclass(frozen=True)
class RuntimeSettings:
    service: str = "service"
    nats_url: str = "nats://127.0.0.1:4222"
    # The path (never the secret itself) of a JSON file {user: password} for a broker that
    # enforces choreo.permissions; empty for a broker without authentication. The user is the
    # service's name unless nats_user says otherwise (the operator tools use "operator").
    nats_credentials_file: str = ""
    nats_user: str = ""
    database_url: str = "sqlite:///data/service.db"
    # Store. Postgres only (SQLite has one connection): connections per process, and how long
    # a transaction waits for a free one before failing (and being retried) instead of hanging.
    database_pool_size: int = 10
    database_acquire_timeout_s: float = 10.0
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0
    # gRPC TLS (choreo.grpc_tls): a certificate and key turn it on; a client CA adds mTLS.
    grpc_tls_cert_file: str = ""
    grpc_tls_key_file: str = ""
    grpc_tls_client_ca_file: str = ""
    # Prometheus /metrics on grpc_host (choreo.metrics); 0: off.
    metrics_port: int = 0
    # Health (choreo.health): NOT_SERVING when a consumer has not finished a fetch cycle for
    # this long while connected (above the handler timeout: a slow batch is not a stall), or
    # when the oldest unpublished outbox row is this old.
    health_consumer_stall_s: float = 60.0
    health_outbox_max_age_s: float = 60.0
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
    # Where a durable starts when this process creates it (one that exists keeps its position):
    # "all" (every event the stream still keeps, so a service added later catches up), "new"
    # (only events published after it is created), "since:<ISO-8601 time>" or
    # "since:<duration>" (2h, 30m, 1d before it is created). See ConsumerStart.
    new_consumer_start: str = "all"
    # A held successor (Ordering.STRICT) waits at least as long as its predecessor may still
    # be retried (retry_budget_s + gap_hold_margin_s) and never fewer than gap_hold_max times;
    # holds start at gap_hold_delay_s and double, up to backoff_max_s.
    gap_hold_max: int = 20
    gap_hold_delay_s: float = 0.25
    gap_hold_margin_s: float = 2.0
    # Timeouts: an external call < a handler < ack_wait (each clamped below the next, so a
    # handler never outlives its ack_wait and gets delivered twice at once). A timeout is a
    # transient failure: the message is retried.
    handler_timeout_s: float = 20.0
    call_timeout_s: float = 5.0
    # The server's own max_deliver is the runtime's bound plus this margin: a message whose
    # deliveries never report back (it crashes or hangs the process) is given up by the
    # runtime before its handler runs again, and the server still stops delivering it if even
    # that cannot finish.
    server_deliver_margin: int = 3
    # How many more deliveries a step that gave up may use to compensate (void a charge, cancel
    # a booking) while its provider is still down; past them the letter raises an alarm and
    # the saga deadline cancels the order. They count towards the server's max_deliver too.
    give_up_attempts: int = 30
    # Relay.
    relay_sweep_interval_s: float = 1.0
    relay_batch: int = 256
    # How long a batch waits for its acks before the relay gives the slots back (the rows stay
    # for the sweep), and how many publishes may await their acks at once.
    relay_publish_timeout_s: float = 5.0
    relay_max_in_flight: int = 1024
    # nats-py's buffer for publishes while it reconnects (bytes); the relay sends nothing then.
    nats_pending_size: int = 2 * 1024 * 1024
    inbox_prune_interval_s: float = 300.0

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
        if not self.nats_url.strip():
            # nats-py would try to reconnect to nothing forever, silently (seen: a spinning
            # process that ignored SIGTERM).
            raise ConfigurationError(
                "CHOREO_NATS_URL is empty: set it to the broker's URL (nats://host:port; "
                "`choreo up` writes its own in <data dir>/system.json), or unset it for "
                "nats://127.0.0.1:4222"
            )
        if self.duplicate_window_s <= 0:
            raise ConfigurationError("CHOREO_DUPLICATE_WINDOW_S must be > 0 seconds")
        if self.max_age_s < self.duplicate_window_s:
            raise ConfigurationError("CHOREO_MAX_AGE_S must be at least CHOREO_DUPLICATE_WINDOW_S")
        if self.max_deliveries < 1:
            raise ConfigurationError("CHOREO_MAX_DELIVERIES must be >= 1")
        if not 0 <= self.grpc_port <= 65535:
            raise ConfigurationError(f"CHOREO_GRPC_PORT {self.grpc_port} is not a port number")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigurationError(
                f"CHOREO_METRICS_PORT {self.metrics_port} is not a port number"
            )
        if self.fetch_batch < 1:
            raise ConfigurationError("CHOREO_FETCH_BATCH must be >= 1")
        for name in ("handler_timeout_s", "call_timeout_s", "ack_wait_s", "gap_hold_delay_s"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"CHOREO_{name.upper()} must be > 0 seconds")
        if self.server_deliver_margin < 1:
            raise ConfigurationError("CHOREO_SERVER_DELIVER_MARGIN must be >= 1")
        # Parsed here for its errors: a bad value fails at start-up, not when a durable is made.
        ConsumerStart.parse(self.new_consumer_start)

    @property
    def consumer_start(self) -> ConsumerStart:
        """Where a durable starts when it is created (``new_consumer_start``, parsed)."""
        return ConsumerStart.parse(self.new_consumer_start)

    def backoff(self, delivery: int) -> float:
        """Delay before redelivery number ``delivery + 1``: exponential, capped."""
        return float(min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, delivery - 1)))

    @property
    def handler_timeout(self) -> float:
        """The handler's time limit: below ack_wait, so the broker never redelivers a message
        while its handler still runs."""
        return min(self.handler_timeout_s, 0.75 * self.ack_wait_s)

    @property
    def call_timeout(self) -> float:
        """An external call's time limit: below the handler's, which also has to commit."""
        return min(self.call_timeout_s, 0.5 * self.handler_timeout)

    @property
    def retry_budget_s(self) -> float:
        """The longest a message can take from its first delivery to being given up: every
        attempt running to the handler timeout, plus every backoff in between."""
        backoffs = sum(self.backoff(d) for d in range(1, self.max_deliveries))
        return backoffs + self.max_deliveries * self.handler_timeout

    def gap_hold_delay(self, hold: int) -> float:
        """Delay before hold number ``hold`` (1-based) is looked at again: doubling, capped."""
        cap = max(self.backoff_max_s, self.gap_hold_delay_s)
        return float(min(cap, self.gap_hold_delay_s * 2 ** max(0, hold - 1)))

    @property
    def gap_holds(self) -> int:
        """How often a successor is held back before it is parked: enough for its delays to
        outlast the predecessor's whole retry budget, and at least ``gap_hold_max``."""
        wanted = self.retry_budget_s + self.gap_hold_margin_s
        holds, waited = 0, 0.0
        while waited < wanted:
            holds += 1
            waited += self.gap_hold_delay(holds)
        return max(self.gap_hold_max, holds)

    def server_max_deliver(self, ordered: bool) -> int:
        """The broker-side bound: above every delivery the runtime itself may ask for."""
        holds = self.gap_holds if ordered else 0
        return self.max_deliveries + self.give_up_attempts + holds + self.server_deliver_margin


NEW_CONSUMER_START_FORMS = (
    "all (every event the stream keeps), new (only events published after the consumer is"
    " created), since:<ISO-8601 time with a zone> (e.g. since:2024-05-01T12:00:00Z) or"
    " since:<duration> (e.g. since:30m, since:2h, since:1d)"
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class ConsumerStart:
    """Where a durable consumer starts when it is created (``CHOREO_NEW_CONSUMER_START``):
    at every event the stream keeps (``all``), after the last one (``new``), or at a time
    (``since``), given as such or as how long before the consumer is created."""

    kind: Literal["all", "new", "since"] = "all"
    at: datetime | None = None
    ago_s: float | None = None

    def start_time(self, now: datetime) -> datetime | None:
        """The time a ``since`` consumer created at ``now`` starts at; None for the others."""
        if self.at is not None:
            return self.at
        if self.ago_s is not None:
            return now - timedelta(seconds=self.ago_s)
        return None

    @classmethod
    def parse(cls, raw: str) -> ConsumerStart:
        value = raw.strip()
        if value.lower() in ("all", "new"):
            return cls("all" if value.lower() == "all" else "new")
        if not value.lower().startswith("since:"):
            raise _bad_start(raw, "is not one of the accepted forms")
        when = value[len("since:") :].strip()
        duration = _DURATION.fullmatch(when.lower())
        if duration is not None:
            ago_s = float(duration[1]) * _UNIT_S[duration[2]]
            if ago_s <= 0:
                raise _bad_start(raw, "is no time before now (use new for that)")
            try:
                datetime.now(UTC) - timedelta(seconds=ago_s)
            except OverflowError:  # here, not when a durable is created
                raise _bad_start(raw, "reaches back before any date (use all for that)") from None
            return cls("since", ago_s=ago_s)
        try:
            at = datetime.fromisoformat(when)
        except ValueError:
            raise _bad_start(raw, "is neither an ISO-8601 time nor a duration") from None
        if at.tzinfo is None:
            # Read as UTC or as the host's zone, it would be hours off on one machine or other.
            raise _bad_start(raw, "has no time zone (add Z or an offset such as +02:00)")
        if at > datetime.now(UTC):
            # Likely a typo (a year), and a consumer created now would skip every event
            # published until then.
            raise _bad_start(raw, "is in the future")
        return cls("since", at=at.astimezone(UTC))


def _bad_start(raw: str, why: str) -> ConfigurationError:
    return ConfigurationError(
        f"CHOREO_NEW_CONSUMER_START={raw!r} {why}; accepted: {NEW_CONSUMER_START_FORMS}"
    )


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
