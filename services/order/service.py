"""The order service's composition root: catalog, handlers, schema and gRPC servicer."""

from __future__ import annotations

import grpc

from choreo.errors import ConfigurationError
from choreo.order.v1 import order_service_pb2_grpc
from choreo.service import ServiceDefinition, ServiceRuntime
from choreo.settings import RuntimeSettings
from services.catalog import CatalogError, load_catalog
from services.order import store
from services.order.api import OrderApi
from services.order.handlers import HANDLERS
from services.settings import SagaSettings

GRPC_SERVICE = "choreo.order.v1.OrderService"


def build(runtime: RuntimeSettings, saga: SagaSettings) -> ServiceDefinition:
    try:
        catalog = load_catalog(saga.catalog_path)
    except CatalogError as exc:
        raise ConfigurationError(f"order service: {exc} (set CHOREO_CATALOG)") from exc

    def add_servicer(server: grpc.aio.Server, service: ServiceRuntime) -> None:
        order_service_pb2_grpc.add_OrderServiceServicer_to_server(
            OrderApi(service, catalog), server
        )

    return ServiceDefinition(
        name="order",
        handlers=HANDLERS,
        schema=store.SCHEMA,
        grpc_services=[GRPC_SERVICE],
        add_servicer=add_servicer,
        resources={"catalog": catalog},
    )
