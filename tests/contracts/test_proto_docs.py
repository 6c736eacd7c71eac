"""Every element of the contracts is documented, read from the descriptors' source info."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from choreo import contracts
from choreo.choreography.v1 import choreography_pb2

from .conftest import REPO_ROOT, run

# Runs the npm tools (buf, protobufjs, the AsyncAPI parser): not a unit test.
pytestmark = pytest.mark.integration

# Field numbers in descriptor.proto, used to build source-info paths.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE, FILE_EXTENSION = 4, 5, 6, 7
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM, MESSAGE_EXTENSION = 2, 3, 4, 6
ENUM_VALUE, SERVICE_METHOD = 2, 2

Path_ = tuple[int, ...]


@pytest.fixture(scope="module")
def image(buf: Path, tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path_factory.mktemp("image") / "image.binpb"
    result = run(
        [buf, "build", "--exclude-imports", "--as-file-descriptor-set", "-o", out], REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _enum(
    enum: descriptor_pb2.EnumDescriptorProto, path: Path_, name: str
) -> Iterator[tuple[Path_, str]]:
    yield path, f"enum {name}"
    for j, value in enumerate(enum.value):
        yield (*path, ENUM_VALUE, j), f"enum value {name}.{value.name}"


def _message(
    message: descriptor_pb2.DescriptorProto, path: Path_, name: str
) -> Iterator[tuple[Path_, str]]:
    yield path, f"message {name}"
    for j, field in enumerate(message.field):
        yield (*path, MESSAGE_FIELD, j), f"field {name}.{field.name}"
    for j, extension in enumerate(message.extension):
        yield (*path, MESSAGE_EXTENSION, j), f"extension {name}.{extension.name}"
    for j, nested in enumerate(message.nested_type):
        if not nested.options.map_entry:
            yield from _message(nested, (*path, MESSAGE_NESTED, j), f"{name}.{nested.name}")
    for j, enum in enumerate(message.enum_type):
        yield from _enum(enum, (*path, MESSAGE_ENUM, j), f"{name}.{enum.name}")


def elements(file: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[Path_, str]]:
    """(source-info path, readable name) of every element that needs a comment."""
    for i, message in enumerate(file.message_type):
        yield from _message(message, (FILE_MESSAGE, i), message.name)
    for i, enum in enumerate(file.enum_type):
        yield from _enum(enum, (FILE_ENUM, i), enum.name)
    for i, service in enumerate(file.service):
        yield (FILE_SERVICE, i), f"service {service.name}"
        for j, method in enumerate(service.method):
            yield (FILE_SERVICE, i, SERVICE_METHOD, j), f"rpc {service.name}.{method.name}"
    for i, extension in enumerate(file.extension):
        yield (FILE_EXTENSION, i), f"extension {extension.name}"


def is_full_sentence(comment: str) -> bool:
    text = " ".join(comment.split())
    return bool(text) and text[0].isupper() and text.endswith(".")


def test_every_message_field_enum_value_service_and_rpc_has_a_full_sentence_comment(
    image: descriptor_pb2.FileDescriptorSet,
) -> None:
    files = [file for file in image.file if file.name.startswith(("choreo/", "shop/"))]
    assert len(files) >= 14
    missing: list[str] = []
    for file in files:
        comments = {
            tuple(location.path): location.leading_comments
            for location in file.source_code_info.location
        }
        for path, name in elements(file):
            comment = comments.get(path, "")
            if not is_full_sentence(comment):
                missing.append(f"{file.name}: {name}: {comment.strip()!r}")

    assert missing == [], "elements without a full-sentence // comment above them"


def test_events_files_hold_only_events_and_their_helper_types(
    image: descriptor_pb2.FileDescriptorSet,
) -> None:
    events = contracts.event_classes()
    for file in image.file:
        if not file.name.endswith("/events.proto"):
            continue
        for message in file.message_type:
            full_name = f"{file.package}.{message.name}"
            used_as_field = any(
                field.type_name == f".{full_name}"
                for other in file.message_type
                for field in other.field
            )
            assert full_name in events or used_as_field, (
                f"{full_name} in {file.name} is neither marked with the `event` option "
                "nor a type used by an event"
            )


def test_every_event_option_names_an_aggregate_type_and_a_description() -> None:
    for name, cls in contracts.event_classes().items():
        options = cls.DESCRIPTOR.GetOptions().Extensions[choreography_pb2.event]
        assert options.aggregate_type, name
        assert is_full_sentence(options.description), name
