"""What installed packages add to the ``choreo`` command, through entry points.

- ``choreo.commands``: a command. The entry point names a function ``add(commands)`` that adds
  its sub-parser and sets ``run`` (``args -> exit code``) as its default. The reference system
  adds ``up``, ``demo`` and ``order``; its tools add ``bench`` and ``chaos``.
- ``choreo.services``: a service ``choreo serve NAME`` runs without ``--app``. The entry point
  names a function ``build(RuntimeSettings) -> ServiceDefinition``, as ``--app`` does.
- ``choreo.secrets``: more secrets for ``choreo secrets --out DIR``. The entry point names a
  function ``write(out: Path) -> list[str]`` returning one line per file it wrote.

The runtime itself names none of them: a package plugs in by declaring, e.g. in its
``pyproject.toml``::

    [project.entry-points."choreo.services"]
    fraud = "acme_fraud.service:build"
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from choreo.errors import ConfigurationError

COMMANDS = "choreo.commands"
SERVICES = "choreo.services"
SECRETS = "choreo.secrets"

# Commands a checkout of the choreo repository adds, named here only so that their absence is
# explained instead of refused as a typo.
REFERENCE_COMMANDS = ("up", "demo", "order", "bench", "chaos")


def _entries(group: str) -> dict[str, EntryPoint]:
    return {entry.name: entry for entry in entry_points(group=group)}


def _load(entry: EntryPoint, group: str) -> Callable[..., Any]:
    try:
        loaded = entry.load()
    except ImportError as exc:
        raise ConfigurationError(
            f"{entry.name!r} of entry point group {group} ({entry.value}) cannot be imported:"
            f" {exc}; reinstall the package that declares it"
        ) from None
    if not callable(loaded):
        raise ConfigurationError(f"{group} {entry.name!r} ({entry.value}) is not a function")
    return loaded


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Every installed command (``choreo.commands``), by name."""
    for name, entry in sorted(_entries(COMMANDS).items()):
        if name in commands.choices:
            continue  # a plugin never replaces a runtime command
        _load(entry, COMMANDS)(commands)


def not_installed(command: str) -> str:
    """Why ``choreo COMMAND`` is unknown, when it is a command of the reference system."""
    return (
        f"`choreo {command}` needs the reference system (the five saga services and their"
        " tools), which is not installed here. It runs from a checkout of the choreo repository:"
        f" `make venv`, then `.venv/bin/choreo {command}`. The runtime alone serves your own"
        " services: `choreo serve NAME --app MODULE:FUNCTION` (see the docs, Writing a service)."
    )


def service_builder(name: str) -> Callable[..., Any]:
    """The ``build`` function an installed package declares for ``choreo serve NAME``."""
    installed = _entries(SERVICES)
    if name not in installed:
        known = ", ".join(sorted(installed)) or "none installed"
        raise ConfigurationError(
            f"unknown service {name!r} (installed services: {known}): serve your own with"
            " --app MODULE:FUNCTION, or install the package that declares it (entry point"
            f" group {SERVICES})"
        )
    return _load(installed[name], SERVICES)


def secret_writers() -> list[Callable[..., Any]]:
    return [_load(entry, SECRETS) for _, entry in sorted(_entries(SECRETS).items())]
