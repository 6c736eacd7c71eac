"""The saga's contracts, read from the generated Protobuf descriptors.

Which messages are published events, which service reacts to which event and what it emits,
and which RPCs emit events are all written in ``proto/`` as custom options (defined in
``proto/choreo/choreography/v1/choreography.proto``). This module only reads them back, so a
tool in any other language can rebuild the same graph from the same descriptors.

Everything here is pure: the generated modules are imported on first use, never at import time.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType, ModuleType

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.descriptor_pb2 import MessageOptions
from google.protobuf.message import Message

from choreo.choreography.v1 import choreography_pb2

#: The bounded contexts, in saga order. Each has ``choreo.<context>.v1.events`` (its events) and
#: ``choreo.<context>.v1.<context>_service`` (its gRPC service, carrying its reactions).
CONTEXTS: tuple[str, ...] = ("order", "inventory", "payment", "shipping", "notification")


@dataclass(frozen=True)
class Edge:
    """One reaction of the saga: ``service`` handles ``trigger`` and emits one of ``emits``.

    Event names are full Protobuf names (``choreo.order.v1.OrderCreated``); ``emits`` is empty
    when the service only records what happened.
    """

    service: str
    trigger: str
    emits: tuple[str, ...]


def _module(context: str, name: str) -> ModuleType:
    return importlib.import_module(f"choreo.{context}.v1.{name}_pb2")


def _service_descriptors() -> list[tuple[str, ServiceDescriptor]]:
    found: list[tuple[str, ServiceDescriptor]] = []
    for context in CONTEXTS:
        file = _module(context, f"{context}_service").DESCRIPTOR
        found.extend((context, service) for service in file.services_by_name.values())
    return found


def _event_options(options: MessageOptions) -> choreography_pb2.EventOptions | None:
    if not options.HasExtension(choreography_pb2.event):
        return None
    return options.Extensions[choreography_pb2.event]


@cache
def _event_classes() -> Mapping[str, type[Message]]:
    classes: dict[str, type[Message]] = {}
    for context in CONTEXTS:
        module = _module(context, "events")
        for name, descriptor in module.DESCRIPTOR.message_types_by_name.items():
            if _event_options(descriptor.GetOptions()) is None:
                continue
            cls = getattr(module, name)
            if not (isinstance(cls, type) and issubclass(cls, Message)):
                raise TypeError(f"{module.__name__}.{name} is not a generated message class")
            classes[descriptor.full_name] = cls
    return MappingProxyType(classes)


def event_classes() -> dict[str, type[Message]]:
    """Every message marked with the ``event`` option, by full name.

    Looks in ``choreo.<context>.v1.events`` for every context in :data:`CONTEXTS`.
    """
    return dict(_event_classes())


def aggregate_type(cls: type[Message]) -> str:
    """The ``aggregate_type`` of an event class, e.g. ``"order"`` for ``OrderCreated``.

    Raises ``ValueError`` when the message is not marked as an event.
    """
    options = _event_options(cls.DESCRIPTOR.GetOptions())
    if options is None or not options.aggregate_type:
        raise ValueError(
            f"{cls.DESCRIPTOR.full_name} is not an event: it has no "
            "(choreo.choreography.v1.event).aggregate_type option in its .proto file"
        )
    return options.aggregate_type


@cache
def _choreography() -> tuple[Edge, ...]:
    edges: list[Edge] = []
    for context, service in _service_descriptors():
        options = service.GetOptions()
        if not options.HasExtension(choreography_pb2.choreography):
            continue
        for reaction in options.Extensions[choreography_pb2.choreography].reactions:
            edges.append(Edge(context, reaction.trigger, tuple(reaction.emits)))
    return tuple(edges)


def choreography() -> list[Edge]:
    """Every reaction of every service, in the order the ``.proto`` files declare them."""
    return list(_choreography())


@cache
def _command_emits() -> Mapping[str, tuple[str, ...]]:
    emits: dict[str, tuple[str, ...]] = {}
    for _, service in _service_descriptors():
        for method in service.methods:
            names = tuple(method.GetOptions().Extensions[choreography_pb2.emits])
            if names:
                emits[method.full_name] = names
    return MappingProxyType(emits)


def command_emits() -> dict[str, tuple[str, ...]]:
    """The events each RPC emits, by the RPC's full name.

    For example ``{"choreo.order.v1.OrderService.PlaceOrder": ("choreo.order.v1.OrderCreated",)}``;
    RPCs that emit nothing (queries) are left out.
    """
    return dict(_command_emits())


def _node_id(name: str) -> str:
    return name.replace(".", "_")


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def mermaid(edges: Iterable[Edge], commands: Mapping[str, tuple[str, ...]] | None = None) -> str:
    """A Mermaid flowchart of the saga: event → event arrows labelled with the reacting service.

    A reaction that emits nothing ends in a "records" node of its service. When ``commands``
    (as from :func:`command_emits`) is given, each RPC is drawn as a start node.
    The output is sorted, so the same graph always gives the same text.
    """
    nodes: dict[str, str] = {}
    arrows: set[str] = set()
    for edge in edges:
        trigger = _node_id(edge.trigger)
        nodes[trigger] = f'{trigger}(["{_short(edge.trigger)}"])'
        if not edge.emits:
            sink = f"{edge.service}_records_{_short(edge.trigger)}"
            nodes[sink] = f'{sink}[["{edge.service} records it"]]'
            arrows.add(f"{trigger} -->|{edge.service}| {sink}")
        for emitted in edge.emits:
            target = _node_id(emitted)
            nodes[target] = f'{target}(["{_short(emitted)}"])'
            arrows.add(f"{trigger} -->|{edge.service}| {target}")
    for rpc, emitted_events in (commands or {}).items():
        source = _node_id(rpc)
        nodes[source] = f'{source}[/"{_short(rpc)}"/]'
        for emitted in emitted_events:
            target = _node_id(emitted)
            nodes[target] = f'{target}(["{_short(emitted)}"])'
            arrows.add(f"{source} --> {target}")
    lines = ["flowchart LR"]
    lines.extend(f"    {nodes[key]}" for key in sorted(nodes))
    lines.extend(f"    {arrow}" for arrow in sorted(arrows))
    return "\n".join(lines) + "\n"
