"""Composition root of the payment service: the fake gateway (with its own ledger), handlers,
gRPC. The gateway is in ``resources["gateway"]`` so tests and the chaos checker read its ledger."""

from __future__ import annotations

from choreo.errors import ConfigurationError
from choreo.service import ServiceDefinition, ServiceRuntime
from choreo.settings import RuntimeSettings
from services import payment_token
from services.catalog import Catalog, CatalogError, load_catalog
from services.payment import api, handlers, store
from services.payment.gateway import FakePaymentGateway
from services.settings import SagaSettings

NAME = "payment"


def catalog_of(saga: SagaSettings) -> Catalog:
    try:
        return load_catalog(saga.catalog_path)
    except CatalogError as exc:
        raise ConfigurationError(f"{NAME}: {exc} (set CHOREO_CATALOG)") from exc


def build(runtime: RuntimeSettings, saga: SagaSettings) -> ServiceDefinition:
    catalog = catalog_of(saga)
    try:
        gateway = FakePaymentGateway.from_catalog(
            saga.payment_ledger,
            catalog,
            failure_rate=saga.payment_failure_rate,
            latency_ms=saga.payment_latency_ms,
            seed=saga.seed,
        )
    except ValueError as exc:
        raise ConfigurationError(f"{NAME}: {exc} (CHOREO_PAYMENT_FAILURE_RATE)") from exc
    deps = handlers.Dependencies(gateway, payment_token.opening_key(saga))

    async def on_start(service: ServiceRuntime) -> None:
        saga.payment_ledger.parent.mkdir(parents=True, exist_ok=True)
        deps.db = service.db

    return ServiceDefinition(
        name=NAME,
        handlers=handlers.bind(deps),
        give_ups=handlers.bind_give_ups(deps),
        schema=store.SCHEMA,
        grpc_services=[api.SERVICE_NAME],
        add_servicer=api.add_to_server,
        on_start=on_start,
        resources={"gateway": gateway, "catalog": catalog},
    )
