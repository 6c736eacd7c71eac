"""The choreo command: run a service, and look after a running system.

choreo serve SERVICE [--app M:F] one service (for supervisors and containers); --app: yours
choreo dlq list|show|replay|discard  dead letters: filter, inspect, replay or discard
choreo dlq parked|unpark ID    outbox rows a service could never publish, and a retry
choreo flow                    the saga graph from the contracts, as Mermaid
choreo status | lag | saga ID  health, lag and throughput; consumer lag; one saga's events
choreo audit                   every saga against its shape in the contracts (+ installed checks)
choreo console                 a web console: sagas, their timelines, dead letters, replay
choreo secrets | health        deployment secrets; a container health check

Installed packages add commands (entry point group ``choreo.commands``, see
:mod:`choreo.cli.plugins`): the reference system adds ``up``, ``demo``, ``order``, ``bench``
and ``chaos``. Each command group is its own module here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from choreo.cli import audit, console, dlq, inspect, ops, plugins, serve
from choreo.cli.options import version_text
from choreo.errors import ConfigurationError
from choreo.redact import redact_url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="choreo", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version_text()}")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (serve, dlq, inspect, ops, console, audit):
        group.add(commands)
    plugins.add_commands(commands)
    return parser


def _refuse_missing_reference_command(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """``choreo up`` without the reference system: say how to get it, not "invalid choice"."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if command in plugins.REFERENCE_COMMANDS and command not in subparsers.choices:
        raise ConfigurationError(plugins.not_installed(command))


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        _refuse_missing_reference_command(parser, given)
        args = parser.parse_args(given)
        from choreo.logs import configure_logging

        serving = args.command == "serve"
        configure_logging(
            logging.INFO if args.verbose or serving else logging.WARNING,
            args.service if serving else "choreo",
        )
        data_dir = getattr(args, "data_dir", None)
        if isinstance(data_dir, Path) and getattr(args, "adopt_system_tls", True):
            from choreo.grpc_tls import adopt_system_tls

            # A system `choreo up --tls` runs there: its CA (and client certificate) for our calls.
            adopt_system_tls(data_dir)
        code: int = args.run(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at exit
        return code
    except ConfigurationError as exc:
        if os.environ.get("CHOREO_LOG_FORMAT", "").strip().lower() == "json":
            # A service whose logs are JSON lines ends with one too.
            logging.getLogger("choreo").error("%s", redact_url(str(exc)))
        else:
            print(f"choreo: {redact_url(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `choreo flow | head`: the reader left. Point stdout at nothing so the interpreter's
        # final flush does not complain again, and end quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
