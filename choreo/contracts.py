"""The saga's contracts, read from the generated Protobuf descriptors.

Which messages are published events, which service reacts to which event and what it emits,
and which RPCs emit events are all written in ``.proto`` files as custom options (defined in
``proto/choreo/choreography/v1/choreography.proto``). This module only reads them back, so a
tool in any other language can rebuild the same graph from the same descriptors.

Nothing is listed by hand. The contracts are every generated module (``*_pb2``) found in the
*contract packages*: those an installed distribution declares in the ``choreo.contracts``
entry-point group (the reference system's contracts wheel declares ``shop``), the packages named
in ``CHOREO_CONTRACTS`` (comma-separated, e.g. ``acme.loyalty.v1``), and those added with
:func:`use` (a service's composition root adds its own). A context exists because a file
declares events or a service in its package (``choreo.subjects`` says how packages map to
contexts, streams and subjects), so another team's package (``acme.loyalty.v1``) takes part like
``shop.order.v1`` does.

Everything here is pure: the generated modules are imported on first use, never at import time.
"""

from __future__ import annotations

import importlib
import os
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pb2 import MessageOptions
from google.protobuf.message import Message

from choreo import subjects
from choreo.choreography.v1 import choreography_pb2
from choreo.errors import ConfigurationError

#: The entry-point group where an installed contracts distribution names its package, e.g.
#: ``[project.entry-points."choreo.contracts"] shop = "shop"``: installing it is enough.
ENTRY_POINT_GROUP = "choreo.contracts"
#: More contract packages, comma-separated (e.g. ``acme.loyalty.v1``).
PACKAGES_VARIABLE = "CHOREO_CONTRACTS"

_used: list[str] = []


def use(*packages: str) -> None:
    """Add contract packages (Python packages holding generated ``*_pb2`` modules).

    A service in another proto package calls this in its composition root, before the runtime
    starts, so the runtime knows its events and reactions.
    """
    added = [name for name in packages if name not in _used]
    if added:
        _used.extend(added)
        refresh()


def contract_packages() -> tuple[str, ...]:
    """Where contracts are looked for, in order, without repeats."""
    from_env = [
        name.strip() for name in os.environ.get(PACKAGES_VARIABLE, "").split(",") if name.strip()
    ]
    return tuple(dict.fromkeys([*installed_packages(), *from_env, *_used]))


def installed_packages() -> list[str]:
    """The contract packages installed distributions declare (``choreo.contracts``), by name."""
    return sorted(entry.value for entry in entry_points(group=ENTRY_POINT_GROUP))


class ContractsError(ConfigurationError):
    """A contract package cannot be found or declares something the runtime cannot run."""


def _modules_of(package: str) -> list[str]:
    try:
        found = importlib.import_module(package)
    except ModuleNotFoundError as exc:
        raise ContractsError(
            f"contract package {package!r} cannot be imported ({exc}): install it or put its"
            f" generated code on PYTHONPATH, or check the name given (--contracts,"
            f" {PACKAGES_VARIABLE})"
        ) from None
    names: set[str] = set()
    for root in getattr(found, "__path__", []):
        # Generated sub-packages have no __init__.py (namespace packages), which pkgutil's walk
        # does not enter, so the files are found on disk.
        for path in Path(root).rglob("*_pb2.py"):
            relative = path.relative_to(root).with_suffix("")
            names.add(".".join([package, *relative.parts]))
    return sorted(names)


@cache
def _modules() -> tuple[ModuleType, ...]:
    modules: dict[str, ModuleType] = {}
    for package in contract_packages():
        for name in _modules_of(package):
            modules.setdefault(name, importlib.import_module(name))
    return tuple(modules.values())


def _files() -> list[FileDescriptor]:
    return [module.DESCRIPTOR for module in _modules()]


def refresh() -> None:
    """Look for the contracts again on next use (e.g. after ``CHOREO_CONTRACTS`` changed)."""
    for cached in (
        _modules,
        _unranked_events,
        _unranked_edges,
        _event_classes,
        _choreography,
        _command_emits,
        _ranked,
    ):
        cached.cache_clear()


@dataclass(frozen=True)
class Edge:
    """One reaction of the saga: ``service`` handles ``trigger`` and emits one of ``emits``.

    Event names are full Protobuf names (``shop.order.v1.OrderCreated``); ``emits`` is empty
    when the service only records what happened. ``catch_up``: events the reaction publishes
    first when the trigger overtook the event that normally causes them.
    """

    service: str
    trigger: str
    emits: tuple[str, ...]
    catch_up: tuple[str, ...] = ()


def _namespace(file: FileDescriptor) -> str:
    try:
        namespace, _, _ = subjects.parse_event_name(f"{file.package}.Event")
    except ValueError:
        raise ContractsError(
            f"{file.name}: package {file.package!r} is not of the form"
            " <organisation>.<context>.v<N> (e.g. acme.loyalty.v1), which choreo needs to name"
            " its subjects and streams"
        ) from None
    return namespace


def _event_options(options: MessageOptions) -> choreography_pb2.EventOptions | None:
    if not options.HasExtension(choreography_pb2.event):
        return None
    return options.Extensions[choreography_pb2.event]


def _service_descriptors() -> list[tuple[str, ServiceDescriptor]]:
    """Every gRPC service of the contracts, with the context its package names."""
    found: list[tuple[str, ServiceDescriptor]] = []
    for file in _files():
        for service in file.services_by_name.values():
            options = service.GetOptions()
            declares = options.HasExtension(choreography_pb2.choreography) or any(
                method.GetOptions().Extensions[choreography_pb2.emits] for method in service.methods
            )
            if declares:
                found.append((subjects.context_of_namespace(_namespace(file)), service))
    return found


@cache
def _unranked_events() -> tuple[tuple[str, type[Message]], ...]:
    found: list[tuple[str, type[Message]]] = []
    for module in _modules():
        file = module.DESCRIPTOR
        for name, descriptor in file.message_types_by_name.items():
            if _event_options(descriptor.GetOptions()) is None:
                continue
            _namespace(file)  # an event needs a package choreo can name subjects after
            cls = getattr(module, name)
            if not (isinstance(cls, type) and issubclass(cls, Message)):
                raise TypeError(f"{module.__name__}.{name} is not a generated message class")
            found.append((descriptor.full_name, cls))
    return tuple(found)


@cache
def _ranked() -> Mapping[str, int]:
    """Contexts in saga order: breadth first from the events that RPCs emit, following the
    reactions; contexts no command reaches come after, by name. Only presentation and the order
    of :func:`contexts` depend on it (e.g. the AsyncAPI document)."""
    edges = _unranked_edges()
    starts = [name for _, service in _service_descriptors() for name in _method_emits(service)]
    order: list[str] = []
    seen: set[str] = set()
    queue = deque(starts)
    while queue:
        event = queue.popleft()
        if event in seen:
            continue
        seen.add(event)
        context = subjects.context_of(event)
        if context not in order:
            order.append(context)
        for edge in edges:
            if edge.trigger == event:
                queue.extend(edge.emits)
    everything = {subjects.context_of(name) for name, _ in _unranked_events()}
    everything |= {context for context, _ in _service_descriptors()}
    order += sorted(everything - set(order))
    return MappingProxyType({context: rank for rank, context in enumerate(order)})


def contexts() -> tuple[str, ...]:
    """Every context the contracts declare events or services in, in saga order."""
    return tuple(_ranked())


def context_of_service(service: str) -> str:
    """The context ``service`` owns: the one whose last name is the service's
    (``order`` -> ``shop.order``). Raises :class:`ContractsError` when none or several do."""
    owned = [context for context in contexts() if subjects.service_of(context) == service]
    if len(owned) != 1:
        found = ", ".join(owned) or "none"
        raise ContractsError(
            f"service {service!r} must own exactly one context of the contracts"
            f" {list(contract_packages())} (found: {found}); is its contract package installed"
            f" or named in {PACKAGES_VARIABLE}?"
        )
    return owned[0]


def _rank(full_name: str) -> int:
    return _ranked().get(subjects.context_of(full_name), len(_ranked()))


@cache
def _event_classes() -> Mapping[str, type[Message]]:
    events = sorted(_unranked_events(), key=lambda item: _rank(item[0]))  # stable in a context
    return MappingProxyType(dict(events))


def event_classes() -> dict[str, type[Message]]:
    """Every message marked with the ``event`` option in the contract packages, by full name."""
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
def _unranked_edges() -> tuple[Edge, ...]:
    edges: list[Edge] = []
    for context, service in _service_descriptors():
        options = service.GetOptions()
        if not options.HasExtension(choreography_pb2.choreography):
            continue
        for reaction in options.Extensions[choreography_pb2.choreography].reactions:
            for name in (reaction.trigger, *reaction.emits, *reaction.catch_up):
                subjects.parse_event_name(name)  # a clear error for a malformed name
            edges.append(
                Edge(
                    subjects.service_of(context),
                    reaction.trigger,
                    tuple(reaction.emits),
                    tuple(reaction.catch_up),
                )
            )
    return tuple(edges)


@cache
def _choreography() -> tuple[Edge, ...]:
    by_service_context = {subjects.service_of(c): c for c, _ in _service_descriptors()}
    return tuple(
        sorted(_unranked_edges(), key=lambda e: _ranked().get(by_service_context[e.service], 0))
    )


def choreography() -> list[Edge]:
    """Every reaction of every service: services in saga order, each one's reactions in the
    order its ``.proto`` file declares them. ``Edge.service`` is the name of the service that
    owns the context of the file (``choreo.subjects.service_of``)."""
    return list(_choreography())


def _method_emits(service: ServiceDescriptor) -> list[str]:
    return [
        name
        for method in service.methods
        for name in method.GetOptions().Extensions[choreography_pb2.emits]
    ]


@cache
def _command_emits() -> Mapping[str, tuple[str, ...]]:
    emits: dict[str, tuple[str, ...]] = {}
    for _context, service in sorted(_service_descriptors(), key=lambda s: _ranked()[s[0]]):
        for method in service.methods:
            names = tuple(method.GetOptions().Extensions[choreography_pb2.emits])
            if names:
                emits[method.full_name] = names
    return MappingProxyType(emits)


def command_emits() -> dict[str, tuple[str, ...]]:
    """The events each RPC emits, by the RPC's full name.

    For example ``{"shop.order.v1.OrderService.PlaceOrder": ("shop.order.v1.OrderCreated",)}``;
    RPCs that emit nothing (queries) are left out.
    """
    return dict(_command_emits())


def _node_id(name: str) -> str:
    return name.replace(".", "_")


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def mermaid(edges: Iterable[Edge], commands: Mapping[str, tuple[str, ...]] | None = None) -> str:
    """A Mermaid flowchart of the saga: event → event arrows labelled with the reacting service.

    A reaction that emits nothing ends in a "records" node of its service; a catch-up (an event
    published first when the trigger overtook its usual cause) is a dotted arrow. When ``commands``
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
        for caught_up in edge.catch_up:
            target = _node_id(caught_up)
            nodes[target] = f'{target}(["{_short(caught_up)}"])'
            arrows.add(f"{trigger} -.->|{edge.service}, catch-up| {target}")
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


def __getattr__(name: str) -> Any:
    # ``CONTEXTS`` was a hand-written tuple; it is now read from the descriptors on first use.
    if name == "CONTEXTS":
        return contexts()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
