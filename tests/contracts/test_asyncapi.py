"""docs/asyncapi.yaml is valid AsyncAPI 3, up to date, and says what the runtime really does."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from choreo import contracts, envelope, subjects

from .conftest import REPO_ROOT, run_node

# Runs the npm tools (buf, protobufjs, the AsyncAPI parser): not a unit test.
pytestmark = pytest.mark.integration

DOC = REPO_ROOT / "docs" / "asyncapi.yaml"
VALIDATOR = REPO_ROOT / "scripts" / "validate-asyncapi.mjs"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "choreo_asyncapi", REPO_ROOT / "scripts" / "asyncapi.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    doc: dict[str, Any] = _generator().document()
    return doc


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return run_node(VALIDATOR, path, package="@asyncapi/parser")


def test_the_committed_document_is_valid_asyncapi_3() -> None:
    result = _validate(DOC)

    assert result.returncode == 0, result.stdout + result.stderr
    events = len(contracts.event_classes())
    operations = events + len(contracts.choreography())
    assert (
        f"valid AsyncAPI 3.1.0, {events} channels, {operations} operations, {events} messages"
        in result.stdout
    )


def test_the_validator_rejects_a_broken_reference(tmp_path: Path) -> None:
    broken = tmp_path / "asyncapi.yaml"
    broken.write_text(
        DOC.read_text().replace(
            "#/channels/OrderCreated/messages/OrderCreated", "#/channels/OrderCreated/messages/No"
        )
    )

    result = _validate(broken)

    assert result.returncode == 1
    assert "invalid-ref" in result.stdout


def test_the_committed_document_is_what_the_contracts_generate(tmp_path: Path) -> None:
    _generator().main(["asyncapi.py", str(tmp_path / "asyncapi.yaml")])

    assert (tmp_path / "asyncapi.yaml").read_text() == DOC.read_text(), "run `make gen`"


def doc_name(full_name: str) -> str:
    """An event's key in the document: OrderCreated for v1, OrderCreatedV2 for v2 beside it."""
    event, version = full_name.rsplit(".", 1)[-1], subjects.version_of(full_name)
    return event if version == 1 else f"{event}V{version}"


def test_every_event_has_a_channel_on_its_real_subject_and_stream(
    document: dict[str, Any],
) -> None:
    channels = document["channels"]
    assert len(channels) == len(contracts.event_classes())
    for full_name in contracts.event_classes():
        channel = channels[doc_name(full_name)]
        # The address with the parameter filled in is the subject the runtime publishes on.
        address = channel["address"].replace("{correlationId}", "order-42")
        assert address == subjects.event_subject(full_name, "order-42")
        context = subjects.context_of(full_name)
        assert channel["x-jetstream-stream"] == subjects.stream_name(context)


def test_every_reaction_is_a_receive_operation_on_its_trigger(document: dict[str, Any]) -> None:
    receives = {
        (name, operation["channel"]["$ref"], operation["x-jetstream-durable"])
        for name, operation in document["operations"].items()
        if operation["action"] == "receive"
    }
    expected = {
        (
            f"{edge.service}Receives{doc_name(edge.trigger)}",
            f"#/channels/{doc_name(edge.trigger)}",
            subjects.durable_name(edge.service, edge.trigger),
        )
        for edge in contracts.choreography()
    }
    assert receives == expected


def test_the_documented_headers_are_the_ones_the_runtime_writes(document: dict[str, Any]) -> None:
    for full_name, cls in contracts.event_classes().items():
        headers = document["components"]["messages"][doc_name(full_name)]["headers"]
        written = envelope.root_envelope(
            full_name,
            source="order",
            correlation_id="order-42",
            aggregate_type=contracts.aggregate_type(cls),
            aggregate_id="order-42",
            aggregate_version=1,
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ).to_headers()

        assert set(written) <= set(headers["properties"]), full_name
        assert set(headers["required"]) <= set(written), full_name
        for name, schema in headers["properties"].items():
            if "const" in schema:
                assert written[name] == schema["const"], f"{full_name}: {name}"
