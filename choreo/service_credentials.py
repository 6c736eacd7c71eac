"""One broker credentials file per user, for deployments that give each process only its own.

``nats-credentials.json`` holds every user's password (each service's and the operator's): it
is what ``choreo up --secure`` hands its local processes, and what the operator keeps. A
container must not get it: whoever breaks into one container would then hold every other
service's user, and the operator's, who may do everything on the bus. So next to it go
``nats-credentials-<user>.json`` files, each with one entry (the same ``{user: password}``
format, so :func:`choreo.permissions.read_credentials` reads either), and
``docker-compose.yml`` mounts each service's own file as its ``nats-credentials`` secret.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from choreo.permissions import read_credentials, write_credentials_file


def per_user_file(folder: Path, user: str) -> Path:
    """Where ``user``'s own credentials file goes, next to the full one."""
    return folder / f"nats-credentials-{user}.json"


def write_per_user_credentials(credentials_file: Path, users: Iterable[str]) -> list[Path]:
    """Split ``credentials_file`` into one file per user (mode 0600) holding only that user's
    password; returns their paths. A user missing from the file is a clear error."""
    written = []
    for user in users:
        credentials = read_credentials(credentials_file, user)  # a missing user: said, raised
        path = per_user_file(credentials_file.parent, user)
        write_credentials_file(path, {user: credentials})
        written.append(path)
    return written
