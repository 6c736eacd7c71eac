"""The event loop a service process runs on: uvloop when it is installed, asyncio's otherwise.

uvloop runs the same asyncio code with the loop, its sockets and its timers in C (libuv).
A service spends much of its CPU between events in the loop (waking tasks, reading and
writing sockets), and on the five reference services uvloop takes about 7-10% off the CPU
per saga below saturation (``scripts/bench_before_after.py``, README "What reliability costs").
``CHOREO_EVENT_LOOP=asyncio`` switches back to asyncio's own loop, e.g. to rule the loop out
while chasing a bug.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from choreo.errors import ConfigurationError

T = TypeVar("T")

VARIABLE = "CHOREO_EVENT_LOOP"
CHOICES = ("uvloop", "asyncio")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``asyncio.Runner``: uvloop's, unless switched off or not installed."""
    choice = os.environ.get(VARIABLE, "uvloop").strip().lower() or "uvloop"
    if choice not in CHOICES:
        raise ConfigurationError(f"{VARIABLE}={choice!r}: use one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:  # e.g. on Windows, where uvloop does not exist: asyncio's own loop
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
