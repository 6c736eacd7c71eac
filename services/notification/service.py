"""Composition root of the notification service: catalog (preferred channels), handlers, gRPC."""

from __future__ import annotations

from choreo.errors import ConfigurationError
from choreo.service import ServiceDefinition
from choreo.settings import RuntimeSettings
from services.catalog import Catalog, CatalogError, load_catalog
from services.notification import api, handlers, store
from services.settings import SagaSettings

NAME = "notification"


def catalog_of(saga: SagaSettings) -> Catalog:
    try:
        return load_catalog(saga.catalog_path)
    except CatalogError as exc:
        raise ConfigurationError(f"{NAME}: {exc} (set CHOREO_CATALOG)") from exc


def build(runtime: RuntimeSettings, saga: SagaSettings) -> ServiceDefinition:
    catalog = catalog_of(saga)
    return ServiceDefinition(
        name=NAME,
        handlers=handlers.bind(handlers.Dependencies(catalog)),
        schema=store.SCHEMA,
        grpc_services=[api.SERVICE_NAME],
        add_servicer=api.add_to_server,
        resources={"catalog": catalog},
    )
