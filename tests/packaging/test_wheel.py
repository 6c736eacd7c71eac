"""The runtime's wheel works outside the repository: built with `python -m build --wheel`,
installed with its dependencies into a fresh venv beside the reference contracts' own wheel
(contracts/pyproject.toml), run from a folder with no checkout in sight. It holds the runtime
only (no top-level `services`), its CLI says clearly what needs the reference system, the
contracts are found because they are installed, and it serves another team's service
(examples/loyalty) on a real nats-server."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from acme.loyalty.v1 import loyalty_service_pb2 as loyalty_pb
from acme.loyalty.v1 import loyalty_service_pb2_grpc as loyalty_grpc

from choreo.broker import EmbeddedBroker, free_port
from choreo.supervisor import ProcessSpec, Supervisor
from choreo.testing import publish_event, wait_for
from shop.common.v1 import money_pb2
from shop.payment.v1 import events_pb2 as payment_events
from tests.examples import LOYALTY_PATHS

REPO = Path(__file__).resolve().parents[2]
APP = "acme_loyalty.service:build"


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        argv, cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=300
    )


def locked_constraints() -> str:
    """requirements-dev.txt's pins with their markers, without the hashes."""
    lock = (REPO / "requirements-dev.txt").read_text()
    return "".join(
        line.removesuffix("\\").rstrip() + "\n"
        for line in lock.splitlines()
        if line and not line.startswith((" ", "#"))
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the runtime's wheel, the fresh venv's bin folder) with the runtime's wheel and the
    reference contracts' wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    # --no-isolation: the build backend is the locked hatchling of this venv, not the index's.
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation"]
    for project in (REPO, REPO / "contracts"):
        built = run([*build, "--outdir", str(root / "dist"), str(project)], root)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (root / "dist").glob("choreo-*.whl")
    (contracts_wheel,) = (root / "dist").glob("choreo_shop_contracts-*.whl")
    venv = root / "venv"
    # No pip inside: this pip installs into it (--python), which saves the venv's own pip's
    # install; --no-compile saves compiling every dependency's bytecode (half the time).
    created = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root)
    assert created.returncode == 0, created.stderr
    pip_into_venv = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    # The wheel's own ranges resolve, held to the lock's versions (pip's constraints take no
    # hashes), so this install is the same on every machine.
    constraints = root / "constraints.txt"
    constraints.write_text(locked_constraints())
    install = [*pip_into_venv, "install", "-q", "--no-compile", "-c", str(constraints)]
    pip = run([*install, str(wheel), str(contracts_wheel)], root)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    yield wheel, venv / "bin"


def test_the_wheel_holds_the_runtime_and_its_generated_options_only(
    installed: tuple[Path, Path],
) -> None:
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}

    assert top_level == {"choreo", "buf", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "choreo/choreography/v1/choreography_pb2.py" in names
    assert "buf/validate/validate_pb2.py" in names
    assert not any(name.startswith(("shop/", "services/")) for name in names)


def test_the_contracts_wheel_holds_the_generated_code_and_the_proto_files(
    installed: tuple[Path, Path],
) -> None:
    wheel, _ = installed
    (contracts_wheel,) = wheel.parent.glob("choreo_shop_contracts-*.whl")
    names = zipfile.ZipFile(contracts_wheel).namelist()

    assert {name.split("/")[0] for name in names if not name.endswith(".dist-info")} >= {"shop"}
    assert not any(name.startswith(("choreo/", "services/")) for name in names)
    for generated in ("events_pb2.py", "events_pb2.pyi", "events.proto", "order_service.proto"):
        assert f"shop/order/v1/{generated}" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    declared = zipfile.ZipFile(contracts_wheel).read(entry_points).decode()
    assert "[choreo.contracts]" in declared and "shop = shop" in declared


def test_the_installed_runtime_imports_and_runs_without_the_repository(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bin_dir = installed
    version = run([str(bin_dir / "choreo"), "--version"], tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "choreo 0.1.0"

    probe = run(
        [
            str(bin_dir / "python"),
            "-c",
            "import importlib.util, choreo, choreo.service, choreo.validation, choreo.cli;"
            "from choreo.choreography.v1 import choreography_pb2;"
            "print(choreo.__file__);"
            "print(importlib.util.find_spec('services'));"
            "print(choreography_pb2.DESCRIPTOR.name)",
        ],
        tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    location, services, options = probe.stdout.split()
    assert location.startswith(str(bin_dir.parent)), "choreo was imported from elsewhere"
    assert services == "None", "the wheel installed a top-level `services` package"
    assert options == "choreo/choreography/v1/choreography.proto"


def site_packages_mb(venv: Path) -> float:
    """The venv's installed packages in MB, without pip and setuptools (every venv has them)."""
    (site,) = venv.glob("lib/python3*/site-packages")
    every_venv = ("pip", "setuptools", "_distutils_hack", "distutils-precedence.pth")
    total = 0
    for entry in site.iterdir():
        if entry.name.split("-")[0] in every_venv or entry.name in every_venv:
            continue
        files = [entry] if entry.is_file() else [f for f in entry.rglob("*") if f.is_file()]
        total += sum(f.stat().st_size for f in files)
    return total / 1e6


def test_the_core_install_is_small(installed: tuple[Path, Path]) -> None:
    # The runtime with its core dependencies only (nats-py, protobuf, grpcio with health,
    # reflection and status, protovalidate, OpenTelemetry), and the reference contracts' wheel:
    # no broker binary, no plots, no database drivers.
    _, bin_dir = installed
    size = site_packages_mb(bin_dir.parent)
    print(f"core install with the reference contracts: {size:.1f} MB of site-packages")
    assert size < 60, f"{size:.1f} MB"


def test_an_optional_part_without_its_extra_names_the_install_line(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bin_dir = installed
    console = run(
        [str(bin_dir / "choreo"), "console", "--nats-url", "nats://127.0.0.1:1"], tmp_path
    )
    assert console.returncode != 0
    assert "Traceback" not in console.stderr
    assert "pip install 'choreo[console]'" in console.stderr


@pytest.mark.parametrize("command", [["demo"], ["up"], ["chaos"], ["order", "list"]])
def test_commands_of_the_reference_system_say_how_to_get_it(
    installed: tuple[Path, Path], tmp_path: Path, command: list[str]
) -> None:
    _, bin_dir = installed
    result = run([str(bin_dir / "choreo"), *command], tmp_path)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"`choreo {command[0]}` needs the reference system" in result.stderr
    assert "checkout" in result.stderr
    assert not (tmp_path / "data").exists(), "a refused command left state behind"


def test_flow_reads_another_team_s_contracts(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, bin_dir = installed
    flow = run(
        [str(bin_dir / "choreo"), "flow", "--contracts", "acme.loyalty.v1"],
        tmp_path,
        PYTHONPATH=LOYALTY_PATHS[1],
    )
    assert flow.returncode == 0, flow.stderr
    assert (
        "shop_payment_v1_PaymentCompleted -->|loyalty| acme_loyalty_v1_PointsAwarded" in flow.stdout
    )

    # The installed contracts wheel is found without being named (entry point choreo.contracts).
    installed_only = run([str(bin_dir / "choreo"), "flow"], tmp_path)
    assert installed_only.returncode == 0, installed_only.stderr
    assert "shop_order_v1_OrderCreated" in installed_only.stdout
    assert "acme_loyalty" not in installed_only.stdout


async def test_the_installed_runtime_serves_another_team_s_service(
    installed: tuple[Path, Path], broker: EmbeddedBroker, js: Any, tmp_path: Path
) -> None:
    _, bin_dir = installed
    port = free_port("127.0.0.1")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    supervisor = Supervisor(
        [
            ProcessSpec(
                name="loyalty",
                argv=[str(bin_dir / "choreo"), "serve", "loyalty", "--app", APP],
                env={
                    **clean,
                    "PYTHONPATH": os.pathsep.join(LOYALTY_PATHS),
                    "CHOREO_NATS_URL": broker.url,
                    "CHOREO_DATABASE_URL": f"sqlite:///{tmp_path / 'loyalty.db'}",
                    "CHOREO_GRPC_HOST": "127.0.0.1",
                    "CHOREO_GRPC_PORT": str(port),
                },
                grpc_address=f"127.0.0.1:{port}",
                log_path=tmp_path / "loyalty.log",
            )
        ]
    )
    await supervisor.start_all(timeout=60)
    try:
        await publish_event(
            js,
            payment_events.PaymentCompleted(
                order_id="o-wheel-1",
                customer_id="c-wheel",
                amount=money_pb2.Money(amount_minor=4_250, currency_code="USD"),
            ),
            aggregate_id="o-wheel-1",
            correlation_id="o-wheel-1",
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            loyalty = loyalty_grpc.LoyaltyServiceStub(channel)

            async def credited() -> bool:
                try:
                    account = await loyalty.GetAccount(
                        loyalty_pb.GetAccountRequest(customer_id="c-wheel")
                    )
                except grpc.aio.AioRpcError as error:
                    assert error.code() is grpc.StatusCode.NOT_FOUND, error
                    return False
                return account.balance == 42

            await wait_for(credited, timeout=30, what="42 points for c-wheel")
        assert await js.stream_info("ACME_LOYALTY")

        # The operator commands of the installed runtime read the saga from the loyalty team's
        # stream once they know its package, and import nothing of the reference system.
        operator = {"PYTHONPATH": LOYALTY_PATHS[1], "CHOREO_CONTRACTS": "acme.loyalty.v1"}
        saga = run(
            [str(bin_dir / "choreo"), "saga", "o-wheel-1", "--nats-url", broker.url],
            tmp_path,
            **operator,
        )
        assert saga.returncode == 0, saga.stderr
        assert "loyalty" in saga.stdout and "PointsAwarded" in saga.stdout
        letters = run(
            [str(bin_dir / "choreo"), "dlq", "list", "--nats-url", broker.url], tmp_path, **operator
        )
        assert letters.returncode == 0, letters.stderr
        assert letters.stdout.strip().endswith("0 open dead letter(s)")
        lag = run([str(bin_dir / "choreo"), "lag", "--json", "--nats-url", broker.url], tmp_path)
        assert lag.returncode == 0, lag.stderr
    finally:
        codes = supervisor.stop_all()
    assert codes == {"loyalty": 0}, (tmp_path / "loyalty.log").read_text()[-3000:]
    assert "Traceback" not in (tmp_path / "loyalty.log").read_text()
