from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"


@pytest.fixture(scope="session")
def buf() -> Path:
    path = REPO_ROOT / "node_modules" / ".bin" / "buf"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make npm` (npm ci) to install the buf CLI")
    return path


def run(cmd: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in cmd], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def proto_files() -> list[Path]:
    """Every .proto file of the module, relative to proto/."""
    return sorted(path.relative_to(PROTO_ROOT) for path in PROTO_ROOT.rglob("*.proto"))
