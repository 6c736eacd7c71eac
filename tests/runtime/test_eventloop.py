"""The event loop a service process runs on (choreo.eventloop): uvloop unless switched off."""

from __future__ import annotations

import asyncio

import pytest

from choreo import eventloop
from choreo.errors import ConfigurationError


async def _loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_a_service_runs_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.VARIABLE, raising=False)
    assert eventloop.run(_loop_module()).startswith("uvloop")


def test_the_switch_brings_back_asyncios_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.VARIABLE, "asyncio")
    assert eventloop.run(_loop_module()).startswith("asyncio")


def test_an_unknown_loop_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.VARIABLE, "trio")
    with pytest.raises(ConfigurationError, match=r"CHOREO_EVENT_LOOP='trio'.*uvloop, asyncio"):
        eventloop.loop_factory()
