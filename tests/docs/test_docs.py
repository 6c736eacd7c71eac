"""The docs site builds with ``--strict`` (broken links and references fail), the README stays
a front door, and the figures and generated parts of the pages are what the code and the
reports say."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from choreo.settings import RuntimeSettings
from choreo.store.sqlite import path_of

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
BIN = Path(sys.executable).parent
README_MAX_LINES = 250


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env={"PATH": f"{BIN}:/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (tmp_path / "site" / "reference" / "index.html").read_text(encoding="utf-8")
    assert "ServiceDefinition" in reference and "HandlerContext" in reference


@pytest.mark.unit
def test_the_readme_is_a_front_door() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move some to docs/"


@pytest.mark.unit
def test_the_readme_links_resolve() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert links
    missing = [link for link in links if "://" not in link and not (REPO / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_the_saga_page_draws_what_choreo_flow_prints() -> None:
    printed = subprocess.run(
        [str(BIN / "choreo"), "flow"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    blocks = re.findall(r"^```mermaid\n(.*?)^```$", page("saga.md"), re.DOTALL | re.MULTILINE)
    assert blocks == [printed.strip() + "\n"], "paste the output of `choreo flow` into saga.md"


@pytest.mark.unit
def test_the_configuration_page_names_every_runtime_setting() -> None:
    text = page("configuration.md")
    missing = [
        f"CHOREO_{f.name.upper()}"
        for f in fields(RuntimeSettings)
        if f"CHOREO_{f.name.upper()}" not in text
    ]
    assert not missing, f"docs/configuration.md does not describe {missing}"


def sqlite_rows() -> list[tuple[str, str]]:
    section = page("configuration.md").split("## SQLite URL forms", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(sqlite:[^`]*)` \| `([^`]*)`", section, re.MULTILINE)


@pytest.mark.unit
def test_the_sqlite_url_forms_are_how_the_store_parses_them() -> None:
    rows = sqlite_rows()
    assert len(rows) >= 4
    for url, documented in rows:
        assert str(path_of(url)) == documented, url


@pytest.mark.unit
@pytest.mark.parametrize("report", ["chaos-long-run.json", "chaos-postgres-run.json"])
def test_the_chaos_page_quotes_its_reports(report: str) -> None:
    run = json.loads((DOCS / report).read_text(encoding="utf-8"))
    text = " ".join(page("chaos.md").split())
    assert run["ok"] and not run["violations"]
    states = run["final_states"]
    expected = [
        f"{run['sagas']} sagas in {run['seconds']} s",
        f"{states['SHIPPED']} shipped and {states['CANCELLED']} cancelled",
        f"the longest saga took {run['max_saga_seconds']} s",
        f"{sum(run['expected_dead_letters'].values())} dead letters",
    ]
    for figure in expected:
        assert figure in text, f"docs/chaos.md does not say {figure!r} ({report})"


@pytest.mark.unit
def test_the_benchmark_page_quotes_its_run() -> None:
    bench = json.loads((DOCS / "bench" / "bench.json").read_text(encoding="utf-8"))
    text = page("benchmark.md")
    # The headline ratio against the baseline of the run kept (naive before, FastStream now).
    headline = [key for key in ("saga_vs_faststream", "saga_vs_naive") if key in bench]
    assert headline, "bench.json has no saga/baseline ratio"
    for fsync, ratio in bench[headline[0]].items():
        assert f"**{ratio:.2f}**" in text, f"{headline[0]} with fsync {fsync}"
    for run in bench["runs"]:
        if run["mode"] == "saga":
            best = max(level["throughput"] for level in run["closed"])
            assert f"**{best:.1f}**" in text
    for historic in ("this round", "an earlier round", "the round before"):
        assert historic not in text.lower()


@pytest.mark.unit
def test_the_install_page_names_every_extra_of_the_runtime() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    text = page("writing-a-service.md")
    runtime_extras = set(project["optional-dependencies"]) - {"dev", "bench"}
    missing = sorted(extra for extra in runtime_extras if f"| `{extra}` |" not in text)
    assert not missing, f"docs/writing-a-service.md's extras table lacks {missing}"


# Folders of this repository whose files the docs name in `code`: a file moved or renamed must
# take its mentions along.
REPO_FOLDERS = (
    "catalog/",
    "choreo/",
    "clients/",
    "deploy/",
    "examples/",
    "proto/",
    "requirements-dev.txt",
    "scripts/",
    "services/",
    "tests/",
)


@pytest.mark.unit
def test_every_file_the_docs_name_exists() -> None:
    documents = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    missing = []
    for document in documents:
        text = document.read_text(encoding="utf-8")
        for path in re.findall(r"`([A-Za-z0-9_./-]+\.[a-z]+)`", text):
            if path.startswith(REPO_FOLDERS) and not (REPO / path).exists():
                missing.append(f"{document.relative_to(REPO)}: {path}")
    assert not missing, "the docs name files that do not exist: " + ", ".join(missing)


@pytest.mark.unit
def test_the_clients_page_states_the_quantity_rules_the_contracts_declare() -> None:
    from buf.validate import validate_pb2

    from shop.common.v1 import order_line_pb2
    from shop.order.v1 import order_service_pb2

    def rules(message: Any, field: str) -> Any:
        options = message.DESCRIPTOR.fields_by_name[field].GetOptions()
        return options.Extensions[validate_pb2.field]

    quantity = rules(order_line_pb2.OrderLine, "quantity").int32
    lines = rules(order_service_pb2.PlaceOrderRequest, "lines").repeated
    per_line = {rule.id: rule.expression for rule in lines.items.cel}
    text = " ".join(page("clients.md").split())
    assert f"{lines.min_items} to {lines.max_items} order lines" in text
    assert per_line["order_line.quantity_per_line"] == "this.quantity <= 1000"
    assert f"quantity is {quantity.gte} to 1000 units in `PlaceOrder`" in text
    assert f"allows up to {quantity.lte}" in text


@pytest.mark.unit
def test_the_configuration_page_states_the_otlp_protocols_the_runtime_reads() -> None:
    from choreo import telemetry

    text = " ".join(page("configuration.md").split())
    default = telemetry.otlp_protocol({})
    assert f"`{default}`, the specification's default when neither is set" in text
    for protocol in telemetry.OTLP_PROTOCOLS:
        assert f"`{protocol}`" in text
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        assert variable in text
