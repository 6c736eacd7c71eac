"""docker-compose.yml gives each container only its own broker credentials (issue 23, finding 8).

The compose file is read as written and, when Debian's ``docker-compose`` is installed, as that
tool resolves it (anchors and merges applied). Every service container must mount exactly its
own ``nats-credentials-<service>`` file, as ``/run/secrets/nats-credentials``; none may see
another service's user, the operator's, or the full file with every password. The files the
secrets name are the ones ``choreo secrets`` writes, with one entry each.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML (via mkdocs) ships no stubs

from choreo import permissions
from choreo.cli.ops import CREDENTIALS_FILE, write_secrets
from choreo.service_credentials import per_user_file, write_per_user_credentials
from services.registry import SERVICE_NAMES
from services.settings import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SECRETS_DIR = "deploy/secrets"


def _as_written() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def _as_resolved() -> dict[str, Any]:
    tool = shutil.which("docker-compose")
    # make test runs compose-check (which installs Debian's docker-compose) before pytest.
    assert tool is not None, "docker-compose is not installed: `make compose-check` installs it"
    out = subprocess.run(
        [tool, "--profile", "operator", "config"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    loaded: dict[str, Any] = yaml.safe_load(out)
    return loaded


def _secret_mounts(container: dict[str, Any]) -> dict[str, str]:
    """source secret -> the file name it has under /run/secrets in the container."""
    mounts = {}
    for entry in container.get("secrets", []):
        if isinstance(entry, str):
            mounts[entry] = entry
        else:
            mounts[entry["source"]] = entry.get("target", entry["source"])
    return mounts


def _secret_file(compose: dict[str, Any], secret: str) -> str:
    """The file a top-level secret names, relative to the repository."""
    file = Path(compose["secrets"][secret]["file"])
    return str(file.relative_to(REPO_ROOT) if file.is_absolute() else file)


def _credentials_user(compose: dict[str, Any], secret: str) -> str | None:
    """The broker user a secret holds (nats-credentials-<user>.json), "*" for the full file
    with every password, None for a secret that is not broker credentials."""
    name = Path(_secret_file(compose, secret)).name
    if name == CREDENTIALS_FILE:
        return "*"
    prefix, suffix = "nats-credentials-", ".json"
    if name.startswith(prefix) and name.endswith(suffix):
        return name[len(prefix) : -len(suffix)]
    return None


def _bind_mounts(container: dict[str, Any]) -> list[str]:
    sources = []
    for volume in container.get("volumes", []):
        sources.append(volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"])
    return sources


def _service_containers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Containers that run `choreo serve NAME`, by NAME."""
    found = {}
    for container in compose["services"].values():
        command = container.get("command") or []
        if isinstance(command, list) and command[:1] == ["serve"]:
            found[command[1]] = container
    return found


@pytest.mark.parametrize("read", [_as_written, _as_resolved], ids=["as-written", "resolved"])
def test_each_service_container_gets_only_its_own_broker_credentials(read: Any) -> None:
    compose = read()
    services = _service_containers(compose)
    assert sorted(services) == sorted(SERVICE_NAMES)
    for name, container in services.items():
        mounts = _secret_mounts(container)
        users = {source: _credentials_user(compose, source) for source in mounts}
        credentials = {source: user for source, user in users.items() if user is not None}
        assert list(credentials.values()) == [name], (name, credentials)
        (source,) = credentials
        # Mounted where the service reads it, under the one name every service uses.
        environment = container["environment"]
        assert environment["CHOREO_NATS_CREDENTIALS_FILE"] == f"/run/secrets/{mounts[source]}"
        assert environment.get("CHOREO_NATS_USER", name) == name
        # Nor through a volume: no credentials file of any kind is bind-mounted.
        for mounted in _bind_mounts(container):
            assert "nats-credentials" not in mounted, (name, mounted)


@pytest.mark.parametrize("read", [_as_written, _as_resolved], ids=["as-written", "resolved"])
def test_the_operator_user_stays_out_of_service_containers(read: Any) -> None:
    compose = read()
    holders = {
        key
        for key, container in compose["services"].items()
        for source in _secret_mounts(container)
        if _credentials_user(compose, source) in (permissions.OPERATOR, "*")
    }
    # Only the operator's tool container, which `docker-compose up` never starts.
    assert holders == {"operator"}
    operator = compose["services"]["operator"]
    assert operator["profiles"] == ["operator"]
    assert operator["command"][:1] != ["serve"]
    (user,) = {_credentials_user(compose, s) for s in _secret_mounts(operator)} - {None}
    assert user == permissions.OPERATOR
    # The full file with every password is no container's secret at all.
    assert all(_credentials_user(compose, secret) != "*" for secret in compose["secrets"])
    # The brokers get the bcrypt hashes only, never a password file.
    for key in ("nats1", "nats2", "nats3"):
        assert not _secret_mounts(compose["services"][key]), key
        assert all("nats-credentials" not in m for m in _bind_mounts(compose["services"][key]))


def test_the_credentials_files_compose_names_hold_one_user_each(tmp_path: Path) -> None:
    """What `choreo secrets` writes (the full file, then one per user) is what the compose
    secrets name, and each per-user file logs in as its user only."""
    compose = _as_written()
    out = tmp_path / SECRETS_DIR
    credentials_file, _ = write_secrets(out, SERVICE_NAMES)
    everyone = json.loads(credentials_file.read_text())
    written = write_per_user_credentials(credentials_file, [*SERVICE_NAMES, permissions.OPERATOR])
    named = {
        _secret_file(compose, secret)
        for secret in compose["secrets"]
        if _credentials_user(compose, secret) is not None
    }
    assert named == {str(path.relative_to(tmp_path)) for path in written}
    for user in [*SERVICE_NAMES, permissions.OPERATOR]:
        path = per_user_file(out, user)
        assert json.loads(path.read_text()) == {user: everyone[user]}
        assert path.stat().st_mode & 0o777 == 0o600
        assert permissions.read_credentials(path, user).password == everyone[user]
