"""Credentials in URLs never reach a terminal or a log: they are masked wherever URLs are
printed (start-up errors of ``choreo up`` and ``choreo serve``, the banner)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from choreo.redact import redact_url

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-pa55"


def test_a_password_in_a_url_is_masked_and_the_rest_kept() -> None:
    assert (
        redact_url(f"postgresql://app:{SECRET}@db.internal:5432/choreo")
        == "postgresql://app:***@db.internal:5432/choreo"
    )
    assert redact_url(f"nats://{SECRET}@broker:4222") == "nats://***@broker:4222"
    assert redact_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    text = f"tried nats://a:{SECRET}@h1:4222, nats://b:{SECRET}@h2:4222 and failed"
    assert SECRET not in redact_url(text)
    assert "nats://a:***@h1:4222" in redact_url(text)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "choreo.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_up_on_an_unreachable_postgres_fails_without_printing_the_password(
    tmp_path: Path,
) -> None:
    result = run(
        "up",
        "--store",
        "postgres",
        "--database-url",
        f"postgresql://app:{SECRET}@127.0.0.1:1/choreo",
        "--data-dir",
        str(tmp_path),
        "--grpc-base-port",
        "0",
    )
    assert result.returncode == 2, result.stderr
    assert "app:***@127.0.0.1:1" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_serve_on_an_unreachable_postgres_fails_without_printing_the_password(
    tmp_path: Path,
) -> None:
    result = run(
        "serve",
        "order",
        env={
            "CHOREO_DATABASE_URL": f"postgresql://app:{SECRET}@127.0.0.1:1/choreo_order",
            "CHOREO_DATA_DIR": str(tmp_path),
            "CHOREO_CONNECT_WAIT_S": "1",
        },
    )
    assert result.returncode == 2, result.stderr
    assert "cannot connect to Postgres at postgresql://app:***@127.0.0.1:1" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_serve_on_an_unreachable_broker_fails_without_printing_the_token(tmp_path: Path) -> None:
    result = run(
        "serve",
        "order",
        env={
            "CHOREO_NATS_URL": f"nats://{SECRET}@127.0.0.1:1",
            "CHOREO_DATA_DIR": str(tmp_path),
            "CHOREO_CONNECT_WAIT_S": "1",
        },
    )
    assert result.returncode == 2, result.stderr
    assert "nats://***@127.0.0.1:1" in result.stderr
    assert SECRET not in result.stdout + result.stderr
