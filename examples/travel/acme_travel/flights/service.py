"""Composition root of the flights service: ``choreo serve flights --app
acme_travel.flights.service:build`` (the service owning the context acme.flights)."""

from __future__ import annotations

from acme_travel import CONTRACTS
from acme_travel.flights import api, handlers, store
from choreo import contracts
from choreo.service import ServiceDefinition
from choreo.settings import RuntimeSettings

NAME = "flights"


def build(runtime: RuntimeSettings) -> ServiceDefinition:
    contracts.use(*CONTRACTS)
    return ServiceDefinition(
        name=NAME,
        handlers=handlers.HANDLERS,
        schema=store.SCHEMA,
        grpc_services=[api.SERVICE_NAME],
        add_servicer=api.add_to_server,
    )
