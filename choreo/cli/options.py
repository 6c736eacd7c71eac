"""Options several commands share: where the running system is, JSON output, numbers from
the environment."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from choreo.errors import ConfigurationError


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("choreo")
    except PackageNotFoundError:
        return "unknown (not installed)"


def env_int(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number") from None


def add_finder_options(parser: argparse.ArgumentParser, *, nats: bool = True) -> None:
    """Where the running system is: flags, else the environment, else ``<data dir>/system.json``
    written by ``choreo up``."""
    if nats:
        parser.add_argument(
            "--nats-url",
            default=None,
            help="the broker (default: env CHOREO_NATS_URL, else the one `choreo up` runs)",
        )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CHOREO_DATA_DIR", "data")),
        help="the data folder of `choreo up`, whose system.json names the running system"
        " (env CHOREO_DATA_DIR)",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
