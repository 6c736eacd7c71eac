"""A service's reactions are declared once, in its contracts, and its handlers must match them.

The choreography options in a service's ``.proto`` file say which events it reacts to; the
broker permissions under ``--secure`` are generated from them. A handler for an event the
options do not list would be refused by the broker only under ``--secure``, and a declared
reaction with no handler would silently never run. :func:`check_reactions` turns both into a
start-up error that names each difference.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from google.protobuf.message import Message

from choreo import contracts
from choreo.errors import ConfigurationError

log = logging.getLogger(__name__)


class ReactionsMismatch(ConfigurationError):
    """A service's handlers and its declared reactions differ."""


def declared_triggers(service: str) -> set[str] | None:
    """The events ``service`` reacts to per its contracts, or None if they declare no service
    of that name."""
    edges = [edge for edge in contracts.choreography() if edge.service == service]
    return {edge.trigger for edge in edges} if edges else None


def check_reactions(service: str, handled: Iterable[type[Message]]) -> None:
    """Raise :class:`ReactionsMismatch` unless ``handled`` equals the declared reactions."""
    handled_names = {cls.DESCRIPTOR.full_name for cls in handled}
    declared = declared_triggers(service)
    if declared is None:
        if handled_names:
            log.warning(
                "service %s handles %s but no contract declares its reactions; under --secure "
                "the broker will refuse its subscriptions (add (choreo.choreography.v1."
                "choreography) options to its gRPC service in the .proto file)",
                service,
                ", ".join(sorted(handled_names)),
            )
        return
    problems = [
        f"{name} has a handler but is not among its declared reactions"
        for name in sorted(handled_names - declared)
    ] + [
        f"{name} is a declared reaction with no handler"
        for name in sorted(declared - handled_names)
    ]
    if problems:
        raise ReactionsMismatch(
            f"service {service}: its handlers and the reactions in its .proto file differ: "
            + "; ".join(problems)
            + ". Declare each reaction once in the choreography options and give it a handler."
        )
