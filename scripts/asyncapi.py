"""Writes docs/asyncapi.yaml, an AsyncAPI 3.0 description of the events, from the descriptors.

    python scripts/asyncapi.py [OUTPUT]     (default: docs/asyncapi.yaml; run by scripts/gen.sh)

Everything comes from the generated contracts (``choreo.contracts``: the messages marked with
the ``event`` option, their aggregate types and descriptions, every service's reactions) and
from the subject scheme and envelope (``choreo.subjects``, ``choreo.envelope``), so the document
cannot drift from what the services publish: ``make gen-check`` fails when it is stale.

One channel per event type, addressed ``choreo.<context>.v<N>.<EventType>.{correlationId}``;
one ``send`` operation per event (the system publishes it) and one ``receive`` operation per
reaction (the service that consumes it, with what it emits). Bodies are binary Protobuf, so a
payload names its Protobuf message and file rather than repeating the schema.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from choreo import contracts, envelope, subjects
from choreo.choreography.v1 import choreography_pb2
from choreo.settings import RuntimeSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "asyncapi.yaml"
NATS_BINDING_VERSION = "0.1.0"


def _short(full_name: str) -> str:
    """The event's name in the document: ``OrderCreated`` for v1, ``OrderCreatedV2`` for a
    later schema version published beside it."""
    event = full_name.rsplit(".", 1)[-1]
    version = subjects.version_of(full_name)
    return event if version == 1 else f"{event}V{version}"


def _headers(full_name: str, aggregate_type: str) -> dict[str, Any]:
    """The envelope's headers (CloudEvents NATS binding), with what is fixed per event type."""
    string = {"type": "string"}
    properties: dict[str, Any] = {
        envelope.H_MSG_ID: {
            **string,
            "description": "The event id; the broker deduplicates on it.",
        },
        envelope.H_SPECVERSION: {**string, "const": "1.0", "description": "CloudEvents version."},
        envelope.H_ID: {**string, "description": "The event id (a UUID), unique per event."},
        envelope.H_TYPE: {**string, "const": full_name, "description": "The event type."},
        envelope.H_SOURCE: {**string, "description": "The service that emitted the event."},
        envelope.H_TIME: {
            **string,
            "format": "date-time",
            "description": "When the event was emitted (RFC 3339, UTC).",
        },
        envelope.H_SUBJECT: {
            **string,
            "description": "The id of the aggregate the event is about.",
        },
        envelope.H_DATASCHEMA: {
            **string,
            "const": f"proto:{full_name}",
            "description": "The Protobuf message of the body.",
        },
        envelope.H_CONTENT_TYPE: {**string, "const": envelope.CONTENT_TYPE},
        envelope.H_SCHEMA_VERSION: {
            **string,
            "const": str(subjects.version_of(full_name)),
            "description": "The major version of the event's package.",
        },
        envelope.H_CORRELATION_ID: {
            **string,
            "description": "The saga: the order id, exactly (the subject may carry a hash).",
        },
        envelope.H_CAUSATION_ID: {
            **string,
            "description": "The ce-id of the event that caused this one; empty for a command.",
        },
        envelope.H_CHAIN_DEPTH: {
            **string,
            "pattern": "^[0-9]+$",
            "description": "Hops from the command that started the saga.",
        },
        envelope.H_AGGREGATE_TYPE: {**string, "const": aggregate_type},
        envelope.H_AGGREGATE_VERSION: {
            **string,
            "pattern": "^[0-9]+$",
            "description": "The aggregate's version after the event.",
        },
        envelope.H_TRACEPARENT: {**string, "description": "W3C trace context, when traced."},
        envelope.H_TRACESTATE: {**string, "description": "W3C trace state, when traced."},
    }
    required = [envelope.H_MSG_ID, *envelope.REQUIRED_HEADERS]
    return {"type": "object", "required": required, "properties": properties}


def document() -> dict[str, Any]:
    events = contracts.event_classes()
    settings = RuntimeSettings()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}

    for full_name, cls in events.items():
        name = _short(full_name)
        context = subjects.context_of(full_name)
        options = cls.DESCRIPTOR.GetOptions().Extensions[choreography_pb2.event]
        proto_file = cls.DESCRIPTOR.file.name
        messages[name] = {
            "name": name,
            "title": full_name,
            "summary": options.description,
            "contentType": envelope.CONTENT_TYPE,
            "correlationId": {
                "description": "The saga (the order id).",
                "location": f"$message.header#/{envelope.H_CORRELATION_ID}",
            },
            "headers": _headers(full_name, options.aggregate_type),
            "payload": {
                "type": "string",
                "format": "binary",
                "description": f"The binary Protobuf message {full_name} ({proto_file}).",
                "x-protobuf-message": full_name,
                "x-protobuf-file": proto_file,
            },
        }
        channels[name] = {
            "address": f"{full_name}.{{correlationId}}",
            "title": full_name,
            "description": (
                f"{options.description} Held by the JetStream stream "
                f"{subjects.stream_name(context)}; subscribe to every {name} with "
                f"`{subjects.event_type_filter(full_name)}`."
            ),
            "parameters": {
                "correlationId": {
                    "description": (
                        "The order id, when it is a safe subject token ([A-Za-z0-9_-], at most "
                        "128 characters); otherwise `h-` and a hash of it. The "
                        "ce-correlationid header always carries it exactly."
                    )
                }
            },
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "x-jetstream-stream": subjects.stream_name(context),
        }
        operations[f"send{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"The {context} service publishes {name}.",
            "messages": [{"$ref": f"#/channels/{name}/messages/{name}"}],
            "bindings": {"nats": {"bindingVersion": NATS_BINDING_VERSION}},
        }

    for edge in contracts.choreography():
        trigger = _short(edge.trigger)
        emits = ", ".join(_short(name) for name in edge.emits) or "nothing (it records it)"
        operations[f"{edge.service}Receives{trigger}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{trigger}"},
            "summary": f"The {edge.service} service reacts to {trigger} and emits {emits}.",
            "messages": [{"$ref": f"#/channels/{trigger}/messages/{trigger}"}],
            "bindings": {"nats": {"bindingVersion": NATS_BINDING_VERSION}},
            # A JetStream durable pull consumer, not a core NATS queue group.
            "x-jetstream-durable": subjects.durable_name(edge.service, edge.trigger),
        }

    return {
        "asyncapi": "3.1.0",
        "info": {
            "title": "choreo saga events",
            "version": "1.0.0",
            "description": (
                "The events of the order saga, generated from proto/ by scripts/asyncapi.py "
                "(do not edit). Each event is published on its own subject in the JetStream "
                "stream of its bounded context (CHOREO_<CONTEXT>, subjects choreo.<context>.>), "
                "with the CloudEvents NATS binding: ce-* headers and a binary Protobuf body. "
                f"The broker deduplicates on Nats-Msg-Id within {settings.duplicate_window_s:g} "
                f"s; streams keep events {settings.max_age_s:g} s by default. "
                "See docs/downstream.md."
            ),
        },
        "defaultContentType": envelope.CONTENT_TYPE,
        "servers": {
            "local": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "The broker of `choreo up` (replace with your deployment's).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def to_yaml(value: Any, indent: int = 0) -> str:
    """A small YAML writer for dicts, lists and scalars; strings are JSON-quoted when needed."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{_key(key)}:")
                lines.append(to_yaml(item, indent + 1))
            else:
                lines.append(f"{pad}{_key(key)}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = to_yaml(item, indent + 1)
                lines.append(f"{pad}- {nested.lstrip()}")
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return "\n".join(lines)


def _scalar(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


def main(argv: list[str]) -> int:
    output = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUTPUT
    output.parent.mkdir(parents=True, exist_ok=True)
    header = "# Generated by scripts/asyncapi.py from proto/ (make gen); do not edit.\n"
    output.write_text(header + to_yaml(document()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
