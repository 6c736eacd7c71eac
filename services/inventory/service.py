"""Composition root of the inventory service: catalog, stock seeding, handlers, gRPC."""

from __future__ import annotations

import logging

from choreo.errors import ConfigurationError
from choreo.service import ServiceDefinition, ServiceRuntime
from choreo.settings import RuntimeSettings
from services.catalog import Catalog, CatalogError, load_catalog
from services.inventory import api, store
from services.inventory.handlers import HANDLERS
from services.settings import SagaSettings

log = logging.getLogger(__name__)

NAME = "inventory"


def catalog_of(saga: SagaSettings) -> Catalog:
    try:
        return load_catalog(saga.catalog_path)
    except CatalogError as exc:
        raise ConfigurationError(f"{NAME}: {exc} (set CHOREO_CATALOG)") from exc


def build(runtime: RuntimeSettings, saga: SagaSettings) -> ServiceDefinition:
    catalog = catalog_of(saga)

    async def seed(service: ServiceRuntime) -> None:
        # Only SKUs missing from the database are added: a restart never resets stock levels.
        async with service.db.transaction() as tx:
            added = await store.seed_stock(tx, catalog)
        log.info("%s: seeded %d SKUs from %s", NAME, added, saga.catalog_path)

    return ServiceDefinition(
        name=NAME,
        handlers=HANDLERS,
        schema=store.SCHEMA,
        grpc_services=[api.SERVICE_NAME],
        add_servicer=api.add_to_server,
        on_start=seed,
        resources={"catalog": catalog},
    )
