"""In a checkout, the generated code is imported from gen/python, the one `make gen` rewrites:
an editable install must not leave copies of it in site-packages, which would shadow it with
what an earlier generation wrote (hatchling copies force-included paths even when editable;
scripts/hatch_wheel_paths.py adds them to real wheels only)."""

from __future__ import annotations

from pathlib import Path

import buf.validate.validate_pb2
import pytest

from choreo.choreography.v1 import choreography_pb2
from shop.order.v1 import events_pb2

pytestmark = pytest.mark.unit

GENERATED = Path(__file__).resolve().parents[2] / "gen" / "python"


@pytest.mark.parametrize("module", [choreography_pb2, events_pb2, buf.validate.validate_pb2])
def test_generated_modules_come_from_gen_python(module: object) -> None:
    location = Path(str(getattr(module, "__file__", "")))
    assert location.is_relative_to(GENERATED), f"{location} shadows gen/python: run `make venv`"
