"""Least privilege on the bus: one NATS user per service, permissions from the choreography.

The choreography options in ``proto/`` say which events each service consumes and which
context it owns, so the broker's permissions are derived from them, not written by hand:

- a service publishes only its own context's events (``choreo.<context>.>``) and its own dead
  letters (``choreo.dlq.<service>.>``), plus the JetStream API calls its own durables need.
  That subject is a letter's origin: ``choreo dlq`` reads the service from it, never from a
  header (``choreo.dlq``). Whoever starts first may create the dead-letter stream; one made
  to rewrite or copy subjects makes every letter in it suspect;
- it creates, reads and pulls only its own durable consumers, by name, on the streams it
  reacts to: it cannot open a consumer on a stream it does not react to, nor pull from another
  service's durable. (The broker cannot pin a durable's filter: a wildcard filter such as
  ``shop.order.v1.OrderCreated.>`` cannot appear in the consumer-create subject. The stream
  and the name are what is enforced.);
- replies come back on a private inbox prefix (``_INBOX_<service>.>``), so no one else can read
  another service's request replies.

Operators (``choreo lag``, ``dlq``, ``saga``, ``audit``) use the ``operator`` user, which may
do everything. Passwords live in a credentials file (mode 0600) whose *path* is passed to each
process; the server's configuration holds only bcrypt hashes. Nothing secret is ever put on a
command line or in a log.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from choreo import contracts, subjects
from choreo.errors import ConfigurationError

OPERATOR = "operator"
JS_API = "$JS.API"
# bcrypt's cost: the server checks a password once per connection, so keep reconnects cheap.
BCRYPT_ROUNDS = 10


def inbox_prefix(user: str) -> str:
    """The private reply prefix of a user (nats-py's ``inbox_prefix`` connect option)."""
    return f"_INBOX_{user}"


@dataclass(frozen=True)
class Consumes:
    """One durable consumer a service owns: its stream, durable name and filter subject."""

    stream: str
    durable: str
    filter_subject: str


@dataclass(frozen=True)
class Permissions:
    user: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def consumed_by(service: str) -> list[Consumes]:
    """The durables ``service`` owns, one per event type it reacts to (from the contracts)."""
    return [
        Consumes(
            stream=subjects.stream_name(subjects.context_of(edge.trigger)),
            durable=subjects.durable_name(service, edge.trigger),
            filter_subject=subjects.event_type_filter(edge.trigger),
        )
        for edge in contracts.choreography()
        if edge.service == service
    ]


def service_permissions(service: str, context: str, consumes: Iterable[Consumes]) -> Permissions:
    """What ``service`` (owner of ``context``) may publish and subscribe to."""
    own_stream = subjects.stream_name(context)
    publish = [
        subjects.stream_subjects(context)[0],  # its own events
        f"{subjects.DLQ_PREFIX}.{service}.>",  # its own dead letters
        f"{JS_API}.INFO",
        f"{JS_API}.STREAM.INFO.*",  # read any stream's settings (to check, never to change)
        f"{JS_API}.STREAM.CREATE.{own_stream}",  # its own stream only: one owner per stream
        f"{JS_API}.STREAM.UPDATE.{own_stream}",
        # Whoever starts first creates the shared dead-letter stream; no one may change it.
        f"{JS_API}.STREAM.CREATE.{subjects.DLQ_STREAM}",
    ]
    for consumer in consumes:
        at = f"{consumer.stream}.{consumer.durable}"
        publish += [
            f"{JS_API}.CONSUMER.DURABLE.CREATE.{at}",
            f"{JS_API}.CONSUMER.INFO.{at}",
            f"{JS_API}.CONSUMER.MSG.NEXT.{at}",
            f"$JS.ACK.{at}.>",  # ack, nak, in-progress and term of its own deliveries
        ]
    return Permissions(
        user=service,
        publish=tuple(publish),
        subscribe=(f"{inbox_prefix(service)}.>",),
    )


def operator_permissions() -> Permissions:
    return Permissions(user=OPERATOR, publish=(">",), subscribe=(">",))


def system_permissions(services: Iterable[str]) -> list[Permissions]:
    """Every service of the choreography (each owns the context named after it) and the
    operator."""
    return [
        service_permissions(name, contracts.context_of_service(name), consumed_by(name))
        for name in services
    ] + [operator_permissions()]


# --- credentials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def __repr__(self) -> str:  # never print a password, even in a traceback
        return f"Credentials(user={self.user!r}, password=<redacted>)"


def generate_credentials(users: Iterable[str]) -> dict[str, Credentials]:
    return {user: Credentials(user, secrets.token_urlsafe(24)) for user in users}


def write_credentials_file(path: Path, credentials: Mapping[str, Credentials]) -> None:
    """A JSON file ``{user: password}`` readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({c.user: c.password for c in credentials.values()}, out)
    os.chmod(path, 0o600)


def read_credentials(path: Path, user: str) -> Credentials:
    """The credentials of ``user`` from a credentials file; a clear error names what to fix."""
    try:
        passwords = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(
            f"NATS credentials file {path} does not exist: set CHOREO_NATS_CREDENTIALS_FILE to"
            " the file `choreo up` wrote (<data dir>/secrets/nats-credentials.json)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"NATS credentials file {path} cannot be read: {exc}") from None
    if not isinstance(passwords, dict) or not isinstance(passwords.get(user), str):
        raise ConfigurationError(f"NATS credentials file {path} has no entry for user {user!r}")
    return Credentials(user, passwords[user])


def authorization_config(
    permissions: Iterable[Permissions], credentials: Mapping[str, Credentials]
) -> str:
    """The ``authorization { users = [...] }`` block of a nats-server configuration.

    Passwords appear only as bcrypt hashes. A client without credentials cannot connect."""
    lines = ["authorization {", "  users = ["]
    for perm in permissions:
        secret = credentials[perm.user].password.encode()
        hashed = bcrypt.hashpw(secret, bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()
        lines += [
            "    {",
            f"      user: {json.dumps(perm.user)}",
            f"      password: {json.dumps(hashed)}",
            "      permissions: {",
            f"        publish: {{ allow: {json.dumps(list(perm.publish))} }}",
            f"        subscribe: {{ allow: {json.dumps(list(perm.subscribe))} }}",
            "      }",
            "    }",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"
