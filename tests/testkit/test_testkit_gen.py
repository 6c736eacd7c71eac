"""The runtime's test contracts: the generated code is what the .proto files generate, and the
runtime reads them as a choreography of their own (contexts, reactions, the saga's shape)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from choreo import contracts, permissions, subjects
from tests import testkit

pytestmark = pytest.mark.unit


@pytest.fixture
def only_testkit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    testkit.use_only_testkit(monkeypatch)
    yield
    testkit.forget_contracts()


def test_the_generated_code_is_what_the_testkit_protos_generate() -> None:
    result = subprocess.run(
        [str(testkit.HERE / "gen.sh"), "--check"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.usefixtures("only_testkit")
def test_the_runtime_reads_the_testkit_as_a_choreography_of_its_own() -> None:
    assert contracts.contexts() == testkit.CONTEXTS
    assert tuple(subjects.service_of(c) for c in testkit.CONTEXTS) == testkit.SERVICES
    assert tuple(subjects.stream_name(c) for c in testkit.CONTEXTS) == testkit.STREAMS
    (saga,) = contracts.sagas()
    assert (saga.name, saga.start_event, saga.key_field) == (
        "ticket",
        "testkit.desk.v1.TicketOpened",
        "ticket_id",
    )
    assert saga.compensations["testkit.ledger.v1.FundsRefused"] == (
        "testkit.stock.v1.ItemsReleased",
        "testkit.desk.v1.TicketCancelled",
    )
    assert {edge.service for edge in contracts.choreography()} == set(testkit.SERVICES)
    for service in testkit.SERVICES:
        assert contracts.context_of_service(service) == f"testkit.{service}"
    assert len(permissions.system_permissions(testkit.SERVICES)) == 4  # and the operator
