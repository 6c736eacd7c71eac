"""Composition root of the booking service: what ``choreo serve booking --app
acme_travel.booking.service:build`` runs.

The service name is the last token of its context (acme.booking -> booking): the runtime gives
that name's service the ACME_BOOKING stream to own.
"""

from __future__ import annotations

from acme_travel import CONTRACTS
from acme_travel.booking import api, handlers, store
from choreo import contracts
from choreo.service import ServiceDefinition
from choreo.settings import RuntimeSettings

NAME = "booking"


def build(runtime: RuntimeSettings) -> ServiceDefinition:
    contracts.use(*CONTRACTS)  # our events and reactions, read from the generated code
    return ServiceDefinition(
        name=NAME,
        handlers=handlers.HANDLERS,
        schema=store.SCHEMA,
        grpc_services=[api.SERVICE_NAME],
        add_servicer=api.add_to_server,
    )
