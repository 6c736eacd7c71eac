"""The vendored google/rpc/*.proto (TypeScript's source) match the Python package's types."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2, status_pb2

from .conftest import REPO_ROOT, run

# Runs the npm tools (buf, protobufjs, the AsyncAPI parser): not a unit test.
pytestmark = pytest.mark.integration

VENDORED = {
    "google/rpc/status.proto": status_pb2,
    "google/rpc/error_details.proto": error_details_pb2,
}


@pytest.fixture(scope="module")
def image(buf: Path, tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path_factory.mktemp("image") / "image.binpb"
    cmd: list[str | Path] = [buf, "build", "--exclude-imports", "-o", out]
    for name in VENDORED:
        cmd += ["--path", f"proto/{name}"]
    result = run(cmd, REPO_ROOT)
    assert result.returncode == 0, result.stderr
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _fields(
    messages: list[descriptor_pb2.DescriptorProto], prefix: str
) -> dict[str, tuple[int, int, str]]:
    found: dict[str, tuple[int, int, str]] = {}
    for message in messages:
        name = f"{prefix}.{message.name}"
        for field in message.field:
            found[f"{name}.{field.name}"] = (field.number, field.type, field.type_name)
        found.update(_fields(list(message.nested_type), name))
    return found


def test_every_vendored_field_has_the_same_number_and_type_in_the_python_package(
    image: descriptor_pb2.FileDescriptorSet,
) -> None:
    assert sorted(file.name for file in image.file) == sorted(VENDORED)
    for file in image.file:
        python = descriptor_pb2.FileDescriptorProto()
        VENDORED[file.name].DESCRIPTOR.CopyToProto(python)
        vendored = _fields(list(file.message_type), file.package)
        installed = _fields(list(python.message_type), python.package)

        assert vendored, file.name
        differ = {
            name: (spec, installed.get(name))
            for name, spec in vendored.items()
            if installed.get(name) != spec
        }
        assert differ == {}, f"{file.name}: vendored vs. installed googleapis-common-protos"


def test_typescript_is_generated_for_the_bad_request_detail() -> None:
    ts = (REPO_ROOT / "gen" / "ts" / "google" / "rpc" / "error_details_pb.ts").read_text()

    assert "export type BadRequest_FieldViolation = Message<" in ts
    assert "export const BadRequestSchema" in ts
