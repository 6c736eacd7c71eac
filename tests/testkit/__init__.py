"""The runtime's own test contracts: a small choreography (``testkit.desk``, ``testkit.stock``,
``testkit.ledger``) that only choreo's tests use, so the runtime is tested without the reference
system or its contracts.

The saga ("ticket"): the desk publishes ``TicketOpened`` (its start, keyed by ``ticket_id``);
stock holds the items (``ItemsHeld``, or the failure ``HoldFailed``); the ledger takes the
payment (``FundsCaptured``, or the failure ``FundsRefused``, which owes ``ItemsReleased`` and
``TicketCancelled``); the desk accepts or cancels the ticket. The ``.proto`` files are in
``tests/testkit/proto``, the generated Python in ``tests/testkit/gen/python``
(``tests/testkit/gen.sh`` regenerates it; ``--check`` says whether it is stale).

Importing this package puts the generated code on ``sys.path`` (``testkit.*`` imports work
after ``import tests.testkit``) and names its modules: ``desk_events``, ``stock_events``,
``ledger_events``, ``types`` (Money, Line, Address), ``desk_service`` and ``desk_grpc``.
:func:`use_only_testkit` makes the runtime read these contracts and no installed ones for one
test, and :func:`subprocess_env` hands the same to a process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from choreo import contracts
from tests import postgres as tests_postgres

HERE = Path(__file__).resolve().parent
GEN = HERE / "gen" / "python"
#: The contract package's name, for ``CHOREO_CONTRACTS`` and ``choreo.contracts.use``.
PACKAGE = "testkit"
#: Its contexts, in saga order, and the services that own them.
CONTEXTS = ("testkit.desk", "testkit.stock", "testkit.ledger")
SERVICES = ("desk", "stock", "ledger")
#: Its streams, by context.
STREAMS = ("TESTKIT_DESK", "TESTKIT_STOCK", "TESTKIT_LEDGER")

if str(GEN) not in sys.path:
    sys.path.insert(0, str(GEN))

# The generated modules, importable from here whatever the import order of a test module.
from testkit.common.v1 import types_pb2 as types  # noqa: E402
from testkit.desk.v1 import desk_service_pb2 as desk_service  # noqa: E402
from testkit.desk.v1 import desk_service_pb2_grpc as desk_grpc  # noqa: E402
from testkit.desk.v1 import events_pb2 as desk_events  # noqa: E402
from testkit.ledger.v1 import events_pb2 as ledger_events  # noqa: E402
from testkit.stock.v1 import events_pb2 as stock_events  # noqa: E402

__all__ = [
    "CONTEXTS",
    "PACKAGE",
    "SERVICES",
    "STREAMS",
    "desk_events",
    "desk_grpc",
    "desk_service",
    "fresh_database",
    "ledger_events",
    "stock_events",
    "subprocess_env",
    "types",
    "use_only_testkit",
]


def use_only_testkit(monkeypatch: pytest.MonkeyPatch) -> None:
    """For one test: the runtime's contracts are the testkit's alone (no installed contract
    package, such as the reference system's, is read), here and in the processes it starts
    with the environment (``CHOREO_CONTRACTS``, ``PYTHONPATH``). Undone with ``monkeypatch``;
    call :func:`forget_contracts` afterwards so that the next test reads its own."""
    monkeypatch.setattr(contracts, "installed_packages", lambda: [])
    monkeypatch.setenv(contracts.PACKAGES_VARIABLE, PACKAGE)
    monkeypatch.setenv("PYTHONPATH", _python_path(os.environ))
    contracts.refresh()


def forget_contracts() -> None:
    """Look the contracts up again on next use (after :func:`use_only_testkit` is undone)."""
    contracts.refresh()


def _python_path(environ: Mapping[str, str]) -> str:
    parts = [str(GEN), *[p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return os.pathsep.join(dict.fromkeys(parts))


def subprocess_env(environ: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """An environment for a process that must read the testkit contracts: ``environ``
    (default: this process's) with ``CHOREO_CONTRACTS`` and ``PYTHONPATH`` set, plus
    ``extra``."""
    base = dict(os.environ if environ is None else environ)
    return {
        **base,
        contracts.PACKAGES_VARIABLE: PACKAGE,
        "PYTHONPATH": _python_path(base),
        **extra,
    }


# The local Postgres, as every other test has it (tests/postgres.py imports no reference code).
fresh_database = tests_postgres.fresh_database
