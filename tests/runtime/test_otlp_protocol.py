"""OTLP's protocol comes from the standard variables, with the specification's default."""

from __future__ import annotations

import pytest

from choreo.errors import ConfigurationError
from choreo.extras import MissingExtra, require
from choreo.telemetry import otlp_protocol

pytestmark = pytest.mark.unit


def test_http_protobuf_is_the_default_and_the_traces_variable_wins() -> None:
    assert otlp_protocol({}) == "http/protobuf"
    assert otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "grpc"
    both = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    assert otlp_protocol(both) == "http/protobuf"


def test_an_unsupported_protocol_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"http/json.*use one of http/protobuf, grpc"):
        otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_a_missing_extra_names_its_install_line() -> None:
    with pytest.raises(MissingExtra, match=r"pip install 'choreo\[postgres\]'"):
        require("a_module_nobody_installed", "postgres")
