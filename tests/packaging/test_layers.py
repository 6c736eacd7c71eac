"""The layers point one way: the runtime (``choreo``) imports nothing of the reference system
(``services``), its tools (``tools``) or its contracts (``shop``), at module level or inside a
function. The reference system plugs into the runtime through entry points instead."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
REFERENCE = ("services", "tools", "shop")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def test_no_module_of_the_runtime_imports_the_reference_system_or_its_contracts() -> None:
    runtime = sorted((REPO / "choreo").rglob("*.py"))
    assert len(runtime) > 40, "the runtime's modules were not found"
    crossing = [
        f"{path.relative_to(REPO)}:{line}: {module}"
        for path in runtime
        for line, module in imported_modules(path)
        if module.split(".")[0] in REFERENCE
    ]
    assert not crossing, "the runtime imports the reference system:\n" + "\n".join(crossing)


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import importlib\n"
        "def f():\n"
        "    from services import registry\n"
        "    return importlib.import_module('shop.order.v1.events_pb2')\n"
    )
    assert [name for _, name in imported_modules(module)] == [
        "importlib",
        "services",
        "shop.order.v1.events_pb2",
    ]


def test_no_variable_can_make_the_runtime_crash_or_drop_a_guarantee() -> None:
    # Fault injection lives in the harness (tools/faults.py), which acts at the runtime's
    # checkpoints only in a process started through it.
    switches = ("CHOREO_CRASH", "CHOREO_UNSAFE", "CHOREO_FAULT", "os.getpid(), signal.SIGKILL")
    found = [
        f"{path.relative_to(REPO)}: {switch}"
        for path in sorted((REPO / "choreo").rglob("*.py"))
        for switch in switches
        if switch in path.read_text()
    ]
    assert not found, found
