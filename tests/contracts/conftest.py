from __future__ import annotations

import shutil
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


def run_node(script: Path, *args: str | Path, package: str) -> subprocess.CompletedProcess[str]:
    """Run a Node.js script of the repository that needs the npm ``package``; a missing Node
    or package fails the test with the step that installs it (never a skip)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node.js 20+ to test the contracts with it")
    if not (REPO_ROOT / "node_modules" / package).exists():
        pytest.fail(f"{package} is missing: run `make npm` (npm ci)")
    return subprocess.run(
        [node, str(script), *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
