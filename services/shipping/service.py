"""Composition root of the shipping service: the fake provider (with its own ledger), handlers,
gRPC. The provider is in ``resources["provider"]`` so tests and the chaos checker read its
ledger."""

from __future__ import annotations

from choreo.errors import ConfigurationError
from choreo.service import ServiceDefinition, ServiceRuntime
from choreo.settings import RuntimeSettings
from services.settings import SagaSettings
from services.shipping import api, handlers, store
from services.shipping.provider import FakeShippingProvider

NAME = "shipping"


def build(runtime: RuntimeSettings, saga: SagaSettings) -> ServiceDefinition:
    try:
        provider = FakeShippingProvider(
            saga.shipping_ledger,
            unserviceable_countries=saga.unserviceable_countries,
            failure_rate=saga.shipping_failure_rate,
            latency_ms=saga.shipping_latency_ms,
            seed=saga.seed,
        )
    except ValueError as exc:
        raise ConfigurationError(f"{NAME}: {exc} (CHOREO_SHIPPING_FAILURE_RATE)") from exc
    deps = handlers.Dependencies(provider)

    async def on_start(service: ServiceRuntime) -> None:
        saga.shipping_ledger.parent.mkdir(parents=True, exist_ok=True)
        deps.db = service.db

    return ServiceDefinition(
        name=NAME,
        handlers=handlers.bind(deps),
        give_ups=handlers.bind_give_ups(deps),
        schema=store.SCHEMA,
        grpc_services=[api.SERVICE_NAME],
        add_servicer=api.add_to_server,
        on_start=on_start,
        resources={"provider": provider},
    )
