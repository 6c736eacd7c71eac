"""Composition root of the hotels service: ``choreo serve hotels --app
acme_travel.hotels.service:build`` (the service owning the context acme.hotels)."""

from __future__ import annotations

from acme_travel import CONTRACTS
from acme_travel.hotels import api, handlers, store
from choreo import contracts
from choreo.service import ServiceDefinition
from choreo.settings import RuntimeSettings

NAME = "hotels"


def build(runtime: RuntimeSettings) -> ServiceDefinition:
    contracts.use(*CONTRACTS)
    return ServiceDefinition(
        name=NAME,
        handlers=handlers.HANDLERS,
        schema=store.SCHEMA,
        grpc_services=[api.SERVICE_NAME],
        add_servicer=api.add_to_server,
    )
