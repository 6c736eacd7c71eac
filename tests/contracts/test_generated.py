"""gen/ holds the Python and TypeScript code of every .proto file, laid out for the runtime."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from .conftest import REPO_ROOT, proto_files

GEN = REPO_ROOT / "gen"


def _stem(proto: Path) -> str:
    return str(proto.with_suffix(""))


@pytest.mark.parametrize("proto", proto_files(), ids=str)
def test_typescript_exists_for_every_proto_file(proto: Path) -> None:
    ts = GEN / "ts" / f"{_stem(proto)}_pb.ts"

    assert ts.is_file(), f"{ts} is missing: run `make gen`"
    assert f"@generated from file {proto.as_posix()}" in ts.read_text()


# The vendored google/rpc files get TypeScript only: Python has them from googleapis-common-protos
# (see proto/google/rpc/README.md and test_google_rpc.py).
OURS_IN_PYTHON = [proto for proto in proto_files() if proto.parts[:2] != ("google", "rpc")]


@pytest.mark.parametrize("proto", OURS_IN_PYTHON, ids=str)
def test_python_and_its_stubs_exist_and_import_for_every_proto_file(proto: Path) -> None:
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
        path = GEN / "python" / f"{_stem(proto)}{suffix}"
        assert path.is_file(), f"{path} is missing: run `make gen`"

    module = importlib.import_module(_stem(proto).replace("/", ".") + "_pb2")

    assert module.DESCRIPTOR.name == proto.as_posix()


def test_gen_python_has_no_init_files() -> None:
    # choreo/__init__.py extends __path__ onto gen/python/choreo; an __init__.py there would
    # shadow the runtime package.
    assert sorted((GEN / "python").rglob("__init__.py")) == []


def test_no_python_is_generated_for_the_vendored_google_rpc_files() -> None:
    assert not (GEN / "python" / "google").exists()


def test_no_generated_file_is_left_over_from_a_deleted_proto_file() -> None:
    stems = {_stem(proto) for proto in proto_files()}
    for path in (GEN / "ts").rglob("*.ts"):
        assert str(path.relative_to(GEN / "ts"))[: -len("_pb.ts")] in stems, path
    for path in (GEN / "python").rglob("*.py*"):
        name = str(path.relative_to(GEN / "python"))
        assert name.split("_pb2", 1)[0] in stems, path
