"""``choreo up --store postgres``: the five services on their own Postgres databases, and a
banner that never shows the password of the database URL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from choreo.broker import free_port, port_is_free
from services.system import postgres_database_urls
from tests.postgres import drop_databases, unique_base_url

REPO = Path(__file__).resolve().parents[2]


def free_base_port() -> int:
    """A base with the five ports from it free (``up`` uses base..base+4)."""
    for _ in range(50):
        base = free_port()
        if all(port_is_free(base + offset) for offset in range(5)):
            return base
    raise AssertionError("no five free ports in a row")


SECRET = "n0t-for-the-terminal"


async def existing(urls: Iterable[str]) -> int:
    """How many of these databases exist, each with its service's migrations applied."""
    found = 0
    for url in urls:
        connection = await asyncpg.connect(url)
        try:
            found += bool(
                await connection.fetchval("SELECT COUNT(*) FROM choreo_schema_migrations")
            )
        finally:
            await connection.close()
    return found


def test_replicas_need_postgres(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "choreo.cli", "up", "--replicas", "2", "--data-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--store postgres" in result.stderr


def test_up_on_postgres_creates_a_database_per_service_and_masks_the_password(
    tmp_path: Path,
) -> None:
    # The local server trusts loopback connections, so any password works: enough to see
    # where it would be printed.
    parts = urlsplit(unique_base_url("choreo_up"))
    url = urlunsplit(parts._replace(netloc=f"postgres:{SECRET}@{parts.netloc}"))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "choreo.cli",
            "up",
            "--store",
            "postgres",
            "--database-url",
            url,
            "--data-dir",
            str(tmp_path),
            "--grpc-base-port",
            str(free_base_port()),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        banner = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            banner.append(line)
            if line.startswith("Ctrl-C") or not line:
                break
        text = "".join(banner)
        if "choreo is up" not in text:
            process.send_signal(signal.SIGINT)
            raise AssertionError(f"no banner: {text!r} {process.communicate(timeout=60)!r}")
        assert "postgres:***@" in text and SECRET not in text
        assert text.count("store postgresql://") == 5
        assert asyncio.run(existing(postgres_database_urls(url).values())) == 5
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        asyncio.run(drop_databases(postgres_database_urls(url).values()))
    assert SECRET not in out + err
    assert process.returncode == 0, err
