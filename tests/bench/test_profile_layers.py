"""The CPU budget's attribution: each py-spy sample goes to the layer of its innermost frame
that has one; threads in native code with no Python frame are idle and left out."""

from __future__ import annotations

from tools.bench_profile import (
    OTHER,
    events_handled_per_saga,
    layer_of,
    parse_collapsed,
)

RUN = "run (asyncio/runners.py:118)"
LOOP = "BaseEventLoop._run_once (asyncio/base_events.py:1922)"
HANDLE = "Consumer._handle (choreo/consumer.py:300)"


def test_the_innermost_known_frame_decides_the_layer() -> None:
    sql = [RUN, LOOP, HANDLE, "SqliteTransaction.execute (choreo/store/sqlite.py:58)"]
    assert layer_of(sql) == "SQL"
    handler = [RUN, LOOP, HANDLE, "on_order_created (services/inventory/handlers.py:40)"]
    assert layer_of(handler) == "handler logic"
    # stdlib frames below a known one belong to it: uuid4 called by the envelope.
    envelope = [RUN, HANDLE, "Envelope.caused (choreo/envelope.py:140)", "uuid4 (uuid.py:723)"]
    assert layer_of(envelope) == "envelope decode/encode"
    assert layer_of([RUN, LOOP]) == "asyncio event loop"
    assert layer_of(["<module> (<string>:1)", "dumps (json/__init__.py:231)"]) == OTHER
    # The naive build's own glue is runtime, not the services' handlers.
    assert layer_of([RUN, "NaiveService.handle (tools/naive.py:150)"]) == ("runtime bookkeeping")


def test_samples_are_counted_per_layer_and_idle_native_threads_left_out() -> None:
    text = "\n".join(
        [
            f"{RUN};{HANDLE};SqliteTransaction.execute (choreo/store/sqlite.py:58) 7",
            f"{RUN};{LOOP} 3",
            "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982) 50",
            "not a sample line",
        ]
    )
    assert parse_collapsed(text) == {"SQL": 7, "asyncio event loop": 3}


def test_events_per_saga_follow_the_happy_path() -> None:
    # PlaceOrder plus the order's reactions; inventory reserves and ships; the others one each.
    assert events_handled_per_saga("inventory") == 2
    assert events_handled_per_saga("payment") == 1
    assert events_handled_per_saga("notification") == 1
    assert events_handled_per_saga("order") >= 4
