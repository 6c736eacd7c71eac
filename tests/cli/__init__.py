"""Running the ``choreo`` command line as a user would: a separate process from the repository's
folder, with no ``CHOREO_*`` variable of the test run leaking in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def choreo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "choreo.cli", *args]


def clean_env(**extra: str) -> dict[str, str]:
    """The test run's environment without its ``CHOREO_*`` variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHOREO_")}
    return {**env, **extra}


def choreo(
    *args: str, stdin: str | None = None, cwd: Path = REPO, **env: str
) -> subprocess.CompletedProcess[str]:
    """``choreo ARGS`` to completion (60 s at most), its output captured."""
    return subprocess.run(
        choreo_command(*args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(**env),
        input=stdin,
    )
