"""The ports `choreo up` picks for its processes never land on the ports it was told to use.

free_port only knows what is bound at the moment; the gRPC base range and the broker's port
are bound later, by the services and the broker. A /metrics server once took a port of the
base range that way, and a service failed to start ("Address already in use")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services import system as system_module
from services.system import PORT_OFFSETS, System, SystemConfig

pytestmark = pytest.mark.unit


def test_a_spare_port_is_never_one_of_the_configured_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, nats = 20_000, 20_010
    told = [base + offset for offset in PORT_OFFSETS.values()] + [nats]
    # What free_port would hand out next if nothing else were listening: the told ports first.
    offered: Iterator[int] = iter([*told, 20_020, 20_021])
    monkeypatch.setattr(system_module, "free_port", lambda host="127.0.0.1": next(offered))
    system = System(SystemConfig(data_dir=tmp_path, grpc_base_port=base, nats_port=nats))

    assert system._spare_port() == 20_020
    assert system._spare_port() == 20_021
