"""Given a service's declared reactions (the choreography options in its .proto file), when
its handlers differ from them, then it does not start and the error names each difference."""

from __future__ import annotations

import pytest

from choreo.reactions import ReactionsMismatch, check_reactions, declared_triggers
from tests.testkit import desk_events, ledger_events

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("testkit_contracts")]

# What the testkit's stock service declares (tests/testkit/proto/testkit/stock/v1).
STOCK_HANDLERS = [desk_events.TicketOpened, ledger_events.FundsRefused]


def test_a_service_that_handles_exactly_what_it_declares_passes() -> None:
    check_reactions("stock", STOCK_HANDLERS)
    assert declared_triggers("stock") == {
        "testkit.desk.v1.TicketOpened",
        "testkit.ledger.v1.FundsRefused",
    }


def test_a_handler_for_an_undeclared_event_is_named() -> None:
    handled = [*STOCK_HANDLERS, ledger_events.FundsCaptured]
    with pytest.raises(ReactionsMismatch) as caught:
        check_reactions("stock", handled)
    assert "testkit.ledger.v1.FundsCaptured has a handler but is not among" in str(caught.value)


def test_a_declared_reaction_without_a_handler_is_named() -> None:
    handled = [cls for cls in STOCK_HANDLERS if cls is not desk_events.TicketOpened]
    with pytest.raises(ReactionsMismatch) as caught:
        check_reactions("stock", handled)
    message = str(caught.value)
    assert "testkit.desk.v1.TicketOpened is a declared reaction with no handler" in message
    assert "FundsRefused" not in message


def test_a_service_no_contract_declares_is_not_held_to_reactions() -> None:
    assert declared_triggers("probe") is None
    check_reactions("probe", [desk_events.TicketDone])
