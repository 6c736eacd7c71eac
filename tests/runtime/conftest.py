"""Fixtures of the runtime's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import testkit


@pytest.fixture
def testkit_contracts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The runtime reads the testkit contracts alone (tests/testkit), not the reference
    system's: a module opts in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    testkit.use_only_testkit(monkeypatch)
    yield
    testkit.forget_contracts()
