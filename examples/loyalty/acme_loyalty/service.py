"""Composition root of the loyalty service: what ``choreo serve loyalty --app
acme_loyalty.service:build`` runs.

The service name is the last token of its context (acme.loyalty -> loyalty): the runtime gives
that name's service the ACME_LOYALTY stream to own.
"""

from __future__ import annotations

from acme_loyalty import api, handlers, store
from choreo import contracts
from choreo.service import ServiceDefinition
from choreo.settings import RuntimeSettings

NAME = "loyalty"
CONTRACTS = "acme.loyalty.v1"  # the generated code of proto/acme/loyalty/v1


def build(runtime: RuntimeSettings) -> ServiceDefinition:
    # The runtime reads events, reactions and streams from the descriptors of the contract
    # packages; this adds ours to the project's own (choreo.*).
    contracts.use(CONTRACTS)
    return ServiceDefinition(
        name=NAME,
        handlers=handlers.HANDLERS,
        schema=store.SCHEMA,
        grpc_services=[api.SERVICE_NAME],
        add_servicer=api.add_to_server,
    )
