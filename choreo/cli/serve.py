"""``choreo serve NAME``: one service in this process, for supervisors and containers.

``--app MODULE:FUNCTION`` names your composition root; without it, NAME is a service an
installed package declares (entry point group ``choreo.services``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from choreo.cli.plugins import service_builder
from choreo.errors import ConfigurationError


def add(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run one service in this process")
    serve.add_argument(
        "service",
        help="the service's name: an installed one (choreo.services), or yours with --app",
    )
    serve.add_argument(
        "--app",
        default=os.environ.get("CHOREO_APP") or None,
        metavar="MODULE:FUNCTION",
        help="your service: FUNCTION(RuntimeSettings) returns its ServiceDefinition"
        " (env CHOREO_APP)",
    )

    # A service serves its own TLS; it never adopts the CA of a `choreo up` in its data folder.
    serve.set_defaults(run=_run, adopt_system_tls=False)


def _run(args: argparse.Namespace) -> int:
    from choreo import eventloop

    return eventloop.run(_serve(args))


def _load_app(spec: str) -> Any:
    """``package.module:function`` -> the function (a clear error for anything else)."""
    import importlib

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"--app {spec!r} is not MODULE:FUNCTION (e.g. acme_loyalty.service:build)"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"--app {spec!r}: cannot import {module_name!r} ({exc}); install it or put it on"
            " PYTHONPATH"
        ) from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigurationError(f"--app {spec!r}: {module_name} has no function {attribute!r}")
    return function


async def _serve(args: argparse.Namespace) -> int:
    from choreo.service import ServiceDefinition, ServiceRuntime
    from choreo.settings import RuntimeSettings

    data_dir = Path(os.environ.get("CHOREO_DATA_DIR", "data"))
    runtime_settings = RuntimeSettings.from_env(
        service=args.service,
        database_url=os.environ.get(
            "CHOREO_DATABASE_URL", f"sqlite:///{data_dir / (args.service + '.db')}"
        ),
    )
    if args.app:
        # Another team's service: its composition root builds the definition from the settings.
        definition = _load_app(args.app)(runtime_settings)
        if not isinstance(definition, ServiceDefinition):
            raise ConfigurationError(f"--app {args.app!r} did not return a ServiceDefinition")
        if definition.name != args.service:
            raise ConfigurationError(
                f"--app {args.app!r} builds the service {definition.name!r}, not"
                f" {args.service!r}: serve it as `choreo serve {definition.name} --app ...`"
            )
    else:
        definition = service_builder(args.service)(runtime_settings)
        if not isinstance(definition, ServiceDefinition):
            raise ConfigurationError(f"service {args.service!r} did not build a ServiceDefinition")
    await ServiceRuntime(definition, runtime_settings).run_until_signal()
    return 0
