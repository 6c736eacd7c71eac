"""CI-sized ``choreo chaos --network`` runs (issue 22).

On SQLite with a single broker: each service's broker link goes through a fault proxy; the
order service is cut under load, loses the acks of what it publishes (for a moment, and past
an 8 s duplicate window, so events are stored twice), and is cut for longer than the saga
deadline; other services' links go silent, one way only (asymmetric), drop,
reset and flap, while orders flow.

On Postgres with a 3-node JetStream cluster: the order service and another are cut from the
node they use (they must fail over to a healthy one within the ping detection time plus 5 s),
the order service's node is isolated (its routes too), a link is cut one way, and acks are
lost after the broker stored the message, for a moment and past the duplicate window; two
services' database connections are reset mid-transaction, or blackholed.

Every saga must end and every invariant hold, and each service must be SERVING again within
the ping detection time plus 5 s of each fault's end. Invariant-4 violations (what the
customer is told) are asserted on their own, after the others, so that a failure says which.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from tests.postgres import url_of
from tools.netchaos import (
    CLUSTER_KINDS,
    DATABASE_KINDS,
    FAILOVER_KINDS,
    KINDS,
    NetworkChaos,
    NetworkChaosConfig,
    recovery_bound_s,
)

pytestmark = pytest.mark.timeout(300)


async def _run(config: NetworkChaosConfig) -> NetworkChaos:
    chaos = NetworkChaos(config, Console(quiet=True))
    try:
        report = await chaos.run()
    finally:
        await chaos.cleanup()
    chaos.console = Console(width=200)
    chaos.print_fault_log()  # the fault log, in the test's output (pytest -s, or on failure)
    print(f"{report.sagas} sagas, final states {dict(report.final_states)}, {report.seconds:.0f}s")
    kinds = Counter(re.sub(r"order \S+", "order <id>", v) for v in report.violations)
    for kind, count in kinds.most_common():
        print(f"violation x{count}: {kind}")
    return chaos


def _assert_no_violations(chaos: NetworkChaos) -> None:
    violations = chaos.report.violations
    told = [v for v in violations if v.startswith("invariant 4")]
    others = [v for v in violations if v not in told]
    assert others == [], "\n".join(others)
    assert told == [], f"invariant 4 (what the customer is told), {len(told)}:\n" + "\n".join(told)


def _assert_recovered(chaos: NetworkChaos) -> None:
    bound = recovery_bound_s()
    for record in chaos.fault_log:
        assert record.recovered_s is not None and record.recovered_s <= bound, record
        if record.kind in ("cut", "long_partition", "silent", "asymmetric"):
            assert record.detected_s is not None, record  # a silent link is noticed
        if record.kind in FAILOVER_KINDS and record.affected:
            assert record.failover_s is not None and record.failover_s <= bound, record


async def test_network_faults_while_orders_flow_keep_every_invariant() -> None:
    # A duplicate window shorter than a loss of acks: ack_lost_late's publishes are stored
    # again, and the inbox must keep their effects single.
    config = NetworkChaosConfig(
        sagas=40, concurrency=8, seed=7, duration_s=120, duplicate_window_s=8.0
    )
    chaos = await _run(config)
    report = chaos.report
    _assert_no_violations(chaos)
    assert {record.kind for record in chaos.fault_log} == set(KINDS)
    order_faults = [r for r in chaos.fault_log if r.service == "order"]
    assert {r.kind for r in order_faults} == {"cut", "ack_lost", "ack_lost_late", "long_partition"}
    assert all(r.bytes_lost > 0 for r in order_faults if r.kind.startswith("ack_lost"))
    # Acks lost past the window: the order service's events were stored twice, and yet no
    # effect doubled (the invariants above).
    assert chaos.stored_twice.get("SHOP_ORDER", 0) > 0, chaos.stored_twice
    _assert_recovered(chaos)
    assert report.sagas >= config.sagas + 50  # orders kept coming while the faults lasted
    assert sum(report.final_states.values()) == report.sagas


async def test_cluster_on_postgres_fails_over_and_keeps_every_invariant() -> None:
    config = NetworkChaosConfig(
        sagas=40,
        concurrency=8,
        seed=11,
        duration_s=120,
        store="postgres",
        database_url=url_of("netchaos"),
        cluster=3,
        kinds=(*CLUSTER_KINDS, "asymmetric", "ack_lost", "ack_lost_late", *DATABASE_KINDS),
        duplicate_window_s=8.0,
        long_partitions=0,
        node_cut_s=28.0,
        node_isolation_s=30.0,
        node_isolations=1,  # the order service's node (the long run isolates its leader too)
    )
    chaos = await _run(config)
    report = chaos.report
    _assert_no_violations(chaos)
    assert {record.kind for record in chaos.fault_log} == set(config.first_round)
    # The order service, the busiest publisher, was cut from its node under load and used
    # the isolated node: it failed over both times.
    order = [r for r in chaos.fault_log if r.service == "order" and r.kind in FAILOVER_KINDS]
    assert {r.kind for r in order if r.affected} == set(CLUSTER_KINDS)
    _assert_recovered(chaos)
    assert sum(report.final_states.values()) == report.sagas


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "report", ["chaos-network-run-sqlite.json", "chaos-network-run-cluster-postgres.json"]
)
def test_the_docs_figures_are_the_long_runs_reports(report: str) -> None:
    """docs/chaos-network.md quotes its long runs' JSON reports, which must pass the bar."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    data = json.loads((docs / report).read_text())
    page = (docs / "chaos-network.md").read_text()
    section = page[page.index(f"]({report})") :]
    faults = sum(v for k, v in data["faults"].items() if k.startswith("network_"))
    assert data["violations"] == [] and data["ok"]
    assert data["sagas"] >= 1000 and faults >= 20
    assert f"**{data['sagas']} sagas**" in section
    assert f"**{faults} network faults**" in section
    assert f"**Violations: {len(data['violations'])}**" in section
    bound = data["recovery_bound_s"]
    for fault in data["network_faults"]:
        assert fault["recovered_s"] is not None and fault["recovered_s"] <= bound, fault
        if fault["kind"] in FAILOVER_KINDS and fault["affected"]:
            assert fault["failover_s"] is not None and fault["failover_s"] <= bound, fault
