"""The five saga services by name: what ``choreo serve NAME`` and ``choreo up`` start.

Each is declared in the entry point group ``choreo.services`` (reference/pyproject.toml) as
one of the functions at the end, so the runtime's ``choreo serve order`` finds it."""

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


def _serve(name: str, runtime: RuntimeSettings) -> ServiceDefinition:
    return build(name, runtime, SagaSettings.from_env())


def order(runtime: RuntimeSettings) -> ServiceDefinition:
    return _serve("order", runtime)


def inventory(runtime: RuntimeSettings) -> ServiceDefinition:
    return _serve("inventory", runtime)


def payment(runtime: RuntimeSettings) -> ServiceDefinition:
    return _serve("payment", runtime)


def shipping(runtime: RuntimeSettings) -> ServiceDefinition:
    return _serve("shipping", runtime)


def notification(runtime: RuntimeSettings) -> ServiceDefinition:
    return _serve("notification", runtime)
