"""``choreo bench --hops``: a saga's latency split hop by hop, from the events' own clocks."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from tests.cli import choreo
from tools.hop_bench import CALLED, CHAIN, LAST, SEEN, hop_breakdown, measure_hops


def saga_clock(start: float, handler_ms: float, broker_ms: float) -> dict[str, tuple[float, float]]:
    """A saga whose every hop takes ``handler_ms`` to the handler and ``broker_ms`` to the
    broker (the command's own event too)."""
    clock: dict[str, tuple[float, float]] = {}
    emitted = start
    for name in (*CHAIN, LAST):
        clock[name] = (emitted, emitted + broker_ms / 1000)
        emitted = clock[name][1] + handler_ms / 1000
    return clock


def test_each_hop_splits_into_the_way_to_the_handler_and_the_way_to_the_broker() -> None:
    sagas = [saga_clock(1000.0 + i, handler_ms=2.0 + i % 2, broker_ms=1.0) for i in range(10)]
    sagas.append({"OrderCreated": (5.0, 5.001)})  # still running: left out
    count, hops = hop_breakdown(sagas)
    assert count == 10
    assert [hop.name for hop in hops] == [
        "PlaceOrder -> OrderCreated",
        "OrderCreated -> InventoryReserved",
        "InventoryReserved -> PaymentCompleted",
        "PaymentCompleted -> ShipmentCreated",
        "ShipmentCreated -> OrderShipped",
        "OrderShipped -> NotificationSent",
    ]
    assert hops[0].to_handler_ms is None
    for hop in hops:
        assert hop.to_broker_ms is not None
        assert hop.to_broker_ms.p50 == pytest.approx(1.0, abs=0.01)
    for hop in hops[1:]:
        assert hop.to_handler_ms is not None
        assert hop.to_handler_ms.p50 == pytest.approx(2.5, abs=0.51)
        assert hop.to_handler_ms.p99 == pytest.approx(3.0, abs=0.01)


def test_the_client_s_clock_adds_the_call_before_the_first_hop_and_a_last_row() -> None:
    sagas = []
    for i in range(10):
        clock = saga_clock(1000.0 + i, handler_ms=2.0, broker_ms=1.0)
        called = clock["OrderCreated"][0] - 0.004  # the call reached the handler in 4 ms
        seen = clock[LAST][1] + 0.0005  # and the client saw the end 0.5 ms after its store
        sagas.append({**clock, CALLED: (called, called), SEEN: (seen, seen)})
    count, hops = hop_breakdown(sagas)
    assert count == 10
    assert hops[0].to_handler_ms is not None
    assert hops[0].to_handler_ms.p50 == pytest.approx(4.0, abs=0.01)
    assert hops[-1].name == f"{LAST} -> the client"
    assert hops[-1].to_broker_ms is None
    assert hops[-1].to_handler_ms is not None
    assert hops[-1].to_handler_ms.p50 == pytest.approx(0.5, abs=0.01)
    # Without the client's clock on every saga, neither end is shown.
    _, without = hop_breakdown([*sagas, saga_clock(2000.0, handler_ms=2.0, broker_ms=1.0)])
    assert without[0].to_handler_ms is None
    assert without[-1].name == f"OrderShipped -> {LAST}"


def test_no_complete_saga_is_an_error_not_an_empty_table() -> None:
    with pytest.raises(ValueError, match="no saga with its whole chain"):
        hop_breakdown([{"OrderCreated": (1.0, 1.001)}])


async def test_a_real_run_places_every_hop_on_the_clocks() -> None:
    figures, hops = await measure_hops(rate=15, seconds=3, console=Console(quiet=True))
    assert figures["sagas"] >= 30  # 45 placed, the warm-up's on top
    assert len(hops) == len(CHAIN) + 2  # the command's event, the chain, the client's end
    for hop in hops:
        # Causality on one machine: nothing is stored before it is emitted, no reaction is
        # emitted before its cause was stored, and the client sees nothing before it is
        # stored nor gets an emit before its call (a small allowance for clock granularity).
        assert hop.to_handler_ms is not None, hop
        assert hop.to_handler_ms.p50 >= -1.0, hop
        if hop.to_broker_ms is not None:
            assert hop.to_broker_ms.p50 >= -1.0, hop
            assert hop.to_broker_ms.p99 < 5000, hop
    assert hops[-1].name == f"{LAST} -> the client"


def test_a_rate_of_zero_or_less_is_refused_with_a_hint(tmp_path: Path) -> None:
    result = choreo("bench", "--hops", "-5", "--output", str(tmp_path))
    assert result.returncode == 2
    assert "--hops takes an arrival rate" in result.stdout
    assert not (tmp_path / "hops.json").exists()
