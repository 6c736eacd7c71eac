"""buf lint is clean, and buf breaking tells breaking from additive changes to the contracts."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import PROTO_ROOT, REPO_ROOT, run

# Runs the npm tools (buf, protobufjs, the AsyncAPI parser): not a unit test.
pytestmark = pytest.mark.integration

BASELINE = REPO_ROOT / "proto-baseline" / "released.binpb"
SHIPPING_EVENTS = Path("shop/shipping/v1/events.proto")
ORDER_LINE = Path("shop/common/v1/order_line.proto")


def test_buf_lint_passes_on_the_real_tree(buf: Path) -> None:
    result = run([buf, "lint"], REPO_ROOT)

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_real_tree_does_not_break_the_released_baseline(buf: Path) -> None:
    result = run([buf, "breaking", "--against", BASELINE], REPO_ROOT)

    assert result.returncode == 0, result.stdout + result.stderr


def _replace(path: Path, old: str, new: str) -> Callable[[Path], None]:
    def edit(proto: Path) -> None:
        text = (proto / path).read_text()
        assert old in text, f"{old!r} not in {path}: update this test"
        (proto / path).write_text(text.replace(old, new, 1))

    return edit


def _append(path: Path, text: str) -> Callable[[Path], None]:
    def edit(proto: Path) -> None:
        with (proto / path).open("a") as file:
            file.write(text)

    return edit


def _breaking_against_baseline(buf: Path, tmp_path: Path, edit: Callable[[Path], None]) -> str:
    """Runs buf breaking on an edited copy of proto/; returns its JSON findings, "" on a pass."""
    shutil.copy(REPO_ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(PROTO_ROOT, tmp_path / "proto")
    edit(tmp_path / "proto")
    result = run([buf, "breaking", "--error-format=json", "--against", BASELINE], tmp_path)
    return "" if result.returncode == 0 else (result.stdout + result.stderr or "failed")


BREAKING = {
    "renamed field": (
        _replace(SHIPPING_EVENTS, "string carrier = 4;", "string carrier_name = 4;"),
        "FIELD_SAME_NAME",
    ),
    "changed field type": (
        # The field's buf.validate rules are typed too, so they change along with it.
        _replace(
            ORDER_LINE,
            "int32 quantity = 2 [(buf.validate.field).int32 = {",
            "int64 quantity = 2 [(buf.validate.field).int64 = {",
        ),
        "FIELD_SAME_TYPE",
    ),
    "removed field": (
        _replace(SHIPPING_EVENTS, "string carrier = 4;", ""),
        "FIELD_NO_DELETE",
    ),
    "renumbered field": (
        _replace(SHIPPING_EVENTS, "string carrier = 4;", "string carrier = 40;"),
        "FIELD_NO_DELETE",
    ),
    "renamed message": (
        _replace(SHIPPING_EVENTS, "message ShippingFailed {", "message ShipmentFailed {"),
        "MESSAGE_NO_DELETE",
    ),
}

ADDITIVE = {
    "new field": _replace(
        SHIPPING_EVENTS,
        "string carrier = 4;",
        "string carrier = 4;\n  // The carrier's service level.\n  string service_level = 8;",
    ),
    "new message": _append(
        SHIPPING_EVENTS,
        "\n// A shipment left the carrier's depot.\nmessage ShipmentDispatched {\n"
        "  // The id of the shipment.\n  string shipment_id = 1;\n}\n",
    ),
    "new enum value": _replace(
        SHIPPING_EVENTS,
        "SHIPPING_FAILURE_REASON_PROVIDER_UNAVAILABLE = 2;",
        "SHIPPING_FAILURE_REASON_PROVIDER_UNAVAILABLE = 2;\n"
        "  // The parcel is too heavy.\n  SHIPPING_FAILURE_REASON_OVERWEIGHT = 3;",
    ),
}


@pytest.mark.parametrize("change", sorted(BREAKING))
def test_a_breaking_change_fails_against_the_baseline(
    buf: Path, tmp_path: Path, change: str
) -> None:
    edit, rule = BREAKING[change]

    output = _breaking_against_baseline(buf, tmp_path, edit)

    assert output, f"buf breaking accepted a {change}"
    assert f'"type":"{rule}"' in output.replace(" ", "")


@pytest.mark.parametrize("change", sorted(ADDITIVE))
def test_an_additive_change_passes_against_the_baseline(
    buf: Path, tmp_path: Path, change: str
) -> None:
    assert _breaking_against_baseline(buf, tmp_path, ADDITIVE[change]) == ""
