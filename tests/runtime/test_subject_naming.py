"""The naming scheme for any team's proto package (choreo.subjects): one pure function from an
event's full name to its context, stream, subjects and durables. No organisation is special:
the runtime's test contracts (``testkit``) map exactly as another team's do."""

from __future__ import annotations

import pytest

from choreo import contracts, subjects
from choreo.errors import ConfigurationError
from tests import testkit


def test_the_test_contracts_names_follow_the_same_rule() -> None:
    name = "testkit.ledger.v1.FundsCaptured"

    assert subjects.context_of(name) == "testkit.ledger"
    assert subjects.stream_name("testkit.ledger") == "TESTKIT_LEDGER"
    assert subjects.stream_subjects("testkit.ledger") == ["testkit.ledger.>"]
    assert subjects.durable_name("desk", name) == "desk__testkit_ledger_v1_FundsCaptured"
    assert subjects.saga_filter("testkit.ledger", "o-1") == "testkit.ledger.*.*.o-1"
    assert subjects.service_of("testkit.ledger") == "ledger"
    assert subjects.version_of(name) == 1


def test_another_team_s_package_is_its_own_context_stream_and_subjects() -> None:
    name = "acme.loyalty.v2.PointsAwarded"

    assert subjects.context_of(name) == "acme.loyalty"
    assert subjects.stream_name("acme.loyalty") == "ACME_LOYALTY"
    assert subjects.stream_subjects("acme.loyalty") == ["acme.loyalty.>"]
    assert subjects.event_subject(name, "o-1") == "acme.loyalty.v2.PointsAwarded.o-1"
    assert subjects.saga_filter("acme.loyalty", "o-1") == "acme.loyalty.*.*.o-1"
    assert subjects.durable_name("audit", name) == "audit__acme_loyalty_v2_PointsAwarded"
    assert subjects.service_of("acme.loyalty") == "loyalty"
    assert subjects.version_of(name) == 2
    assert subjects.event_type_of_subject("acme.loyalty.v2.PointsAwarded.o-1") == name
    assert subjects.event_type_of_subject(name) == name


def test_a_context_without_its_organisation_is_refused_naming_the_form() -> None:
    with pytest.raises(ValueError, match=r"'shop\.order'"):
        subjects.stream_name("order")


def test_deeper_namespaces_work_and_a_choreo_subpackage_keeps_its_whole_name() -> None:
    assert subjects.context_of("com.acme.loyalty.v1.PointsAwarded") == "com.acme.loyalty"
    assert subjects.stream_name("com.acme.loyalty") == "COM_ACME_LOYALTY"
    assert subjects.context_of("choreo.x.y.v1.Happened") == "choreo.x.y"
    assert subjects.stream_subjects("choreo.x.y") == ["choreo.x.y.>"]


UNROUTABLE = [
    "OrderCreated",
    "acme.v1.PointsAwarded",  # no context
    "acme.loyalty.PointsAwarded",  # no version
    "acme.loyalty.v1",
    "acme.loyalty.v1beta.PointsAwarded",
    "acme.loyalty.v1.Points-Awarded",
]


@pytest.mark.parametrize("name", UNROUTABLE)
def test_a_name_choreo_cannot_route_is_refused_saying_the_form(name: str) -> None:
    with pytest.raises(ValueError, match=r"<organisation>\.<context>\.v<N>\.<EventType>"):
        subjects.event_subject(name, "o-1")


def test_same_event_type_ignores_the_version_only() -> None:
    assert subjects.same_event_type(
        "acme.loyalty.v1.PointsAwarded", "acme.loyalty.v2.PointsAwarded"
    )
    assert not subjects.same_event_type(
        "acme.loyalty.v1.PointsAwarded", "acme.other.v1.PointsAwarded"
    )
    assert not subjects.same_event_type("nonsense", "nonsense")


@pytest.mark.usefixtures("testkit_contracts")
def test_a_contract_package_that_is_not_there_is_a_clear_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert contracts.contexts() == testkit.CONTEXTS
    monkeypatch.setenv(contracts.PACKAGES_VARIABLE, f"{testkit.PACKAGE},acme.nowhere.v1")
    contracts.refresh()  # the variable is read when the contracts are first looked for
    try:
        with pytest.raises(ConfigurationError, match=r"'acme\.nowhere\.v1' cannot be imported"):
            contracts.contexts()
    finally:
        monkeypatch.setenv(contracts.PACKAGES_VARIABLE, testkit.PACKAGE)
        contracts.refresh()
    assert contracts.contexts() == testkit.CONTEXTS
