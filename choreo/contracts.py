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

import functools
import importlib
import os
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, cast

from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    FileDescriptor,
    ServiceDescriptor,
)
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
        _sagas,
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
                found.append((_namespace(file), service))  # a context is its namespace
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


@dataclass(frozen=True)
class SagaShape:
    """The shape of one saga, as the ``(choreo.choreography.v1.saga)`` option of the event
    that starts it declares it: what ends it, what it owes after each failure, and its key.

    Event names are full Protobuf names. ``start_events`` is ``start_event`` and every other
    version of it in the contracts (``shop.order.v2.OrderCreated`` beside v1 during a
    migration window): a saga starts with whichever comes first. ``compensations`` maps each
    failure event to the events that must follow it once each, in the order declared.
    """

    name: str
    start_event: str
    key_field: str
    final_events: tuple[str, ...]
    success_events: tuple[str, ...]
    compensations: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    closing_event: str = ""
    start_events: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.start_events:
            object.__setattr__(self, "start_events", (self.start_event,))
        object.__setattr__(self, "compensations", MappingProxyType(dict(self.compensations)))

    def starts_with(self, event_type: str) -> bool:
        """Whether ``event_type`` (a full name) starts this saga, in any version."""
        return event_type in self.start_events or subjects.same_event_type(
            event_type, self.start_event
        )

    @property
    def failure_events(self) -> tuple[str, ...]:
        """The failures that owe compensations, in the order declared."""
        return tuple(self.compensations)

    @property
    def compensation_events(self) -> frozenset[str]:
        """Every event some failure requires (the union of the ``required`` lists)."""
        return frozenset(name for required in self.compensations.values() for name in required)

    @property
    def failed_events(self) -> tuple[str, ...]:
        """The final events that end the saga in failure (final, not success)."""
        return tuple(name for name in self.final_events if name not in self.success_events)

    def events(self) -> frozenset[str]:
        """Every event the option names."""
        return frozenset(
            {
                *self.start_events,
                *self.final_events,
                *self.compensations,
                *self.compensation_events,
                *((self.closing_event,) if self.closing_event else ()),
            }
        )

    def key_of(self, message: Message) -> str:
        """The saga's key (its correlation id) in a start event."""
        return str(getattr(message, self.key_field))


def _saga_options(options: MessageOptions) -> choreography_pb2.SagaOptions | None:
    if not options.HasExtension(choreography_pb2.saga):
        return None
    return options.Extensions[choreography_pb2.saga]


def _known_event(events: Mapping[str, Descriptor], where: str, name: str, role: str) -> str:
    if name not in events:
        raise ContractsError(
            f"{where}: its {role} {name!r} is not an event of the contracts"
            f" {list(contract_packages())}"
        )
    return name


def read_saga_shapes(events: Mapping[str, Descriptor]) -> list[SagaShape]:
    """The sagas that the events (by full name) declare, checked against those events.

    Raises :class:`ContractsError` naming the start event when its option names an event that
    is not among ``events``, or a ``key_field`` that is not a string field of the start event
    (in each of its versions). Pure: :func:`sagas` gives it the contracts' events.
    """
    shapes: list[SagaShape] = []
    for start, descriptor in events.items():
        options = _saga_options(descriptor.GetOptions())
        if options is None:
            continue
        where = f"{start} (its (choreo.choreography.v1.saga) option)"
        if any(shape.starts_with(start) for shape in shapes):
            raise ContractsError(
                f"{where}: another version of {start} already starts a saga; declare the saga"
                " on one version only"
            )

        known = functools.partial(_known_event, events, where)
        finals = tuple(known(name, "final event") for name in options.final_events)
        if not finals:
            raise ContractsError(f"{where}: it names no final_events; a saga must end")
        success = tuple(known(name, "success event") for name in options.success_events)
        for name in success:
            if name not in finals:
                raise ContractsError(f"{where}: success event {name!r} is not a final event")
        compensations: dict[str, tuple[str, ...]] = {}
        for compensation in options.compensations:
            failure = known(compensation.failure, "failure event")
            if failure in compensations:
                raise ContractsError(f"{where}: failure {failure!r} is listed twice")
            compensations[failure] = tuple(
                known(name, f"compensation of {failure}") for name in compensation.required
            )
        closing = known(options.closing_event, "closing event") if options.closing_event else ""
        versions = tuple(
            name for name in events if name == start or subjects.same_event_type(name, start)
        )
        for version in versions:
            key = events[version].fields_by_name.get(options.key_field)
            if (
                not options.key_field
                or key is None
                or key.type != FieldDescriptor.TYPE_STRING
                or key.is_repeated
            ):
                raise ContractsError(
                    f"{where}: key_field {options.key_field!r} is not a string field of"
                    f" {version}; it names the field whose value is the saga's correlation id"
                )
        shapes.append(
            SagaShape(
                name=options.name or _short(start),
                start_event=start,
                key_field=options.key_field,
                final_events=finals,
                success_events=success,
                compensations=compensations,
                closing_event=closing,
                start_events=versions,
            )
        )
    return shapes


@cache
def _sagas() -> tuple[SagaShape, ...]:
    events = {name: cast(Descriptor, cls.DESCRIPTOR) for name, cls in _event_classes().items()}
    return tuple(read_saga_shapes(events))


def sagas() -> list[SagaShape]:
    """Every saga the contracts declare (the ``saga`` option of its start event), in saga
    order. Raises :class:`ContractsError` for an option that names an unknown event or a key
    field the start event does not have."""
    return list(_sagas())


def saga_of(event_type: str) -> SagaShape | None:
    """The saga ``event_type`` (a full name, any version) starts, if any."""
    return next((shape for shape in _sagas() if shape.starts_with(event_type)), None)


def __getattr__(name: str) -> Any:
    # ``CONTEXTS`` was a hand-written tuple; it is now read from the descriptors on first use.
    if name == "CONTEXTS":
        return contexts()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
