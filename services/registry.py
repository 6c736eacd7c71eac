"""The five saga services by name: what ``choreo serve NAME`` and ``choreo up`` start."""

from __future__ import annotations

import importlib

from choreo.service import ServiceDefinition
from choreo.settings import RuntimeSettings
from services.settings import SagaSettings

SERVICE_NAMES = ("order", "inventory", "payment", "shipping", "notification")
# gRPC port offsets from the base port (default 50051), so `choreo up` has stable addresses.
PORT_OFFSETS = {name: offset for offset, name in enumerate(SERVICE_NAMES)}


def build(name: str, runtime: RuntimeSettings, saga: SagaSettings) -> ServiceDefinition:
    if name not in SERVICE_NAMES:
        raise ValueError(f"unknown service {name!r}: choose one of {', '.join(SERVICE_NAMES)}")
    module = importlib.import_module(f"services.{name}.service")
    definition: ServiceDefinition = module.build(runtime, saga)
    return definition
