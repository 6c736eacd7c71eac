"""examples/hello, the README's hello-world service: the README shows the file byte for byte,
and the file runs as the README says (``choreo serve hello --app hello_service:build``) on a
real nats-server, handling each OrderCreated once."""

from __future__ import annotations

import importlib
import re
import sqlite3
import sys
import uuid
from pathlib import Path
from typing import Any

from choreo.broker import EmbeddedBroker, free_port
from choreo.order.v1 import events_pb2 as order_events
from choreo.service import ServiceDefinition
from choreo.settings import RuntimeSettings
from choreo.subjects import durable_name
from choreo.supervisor import ProcessSpec, Supervisor
from choreo.testing import publish_event, wait_for

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello"
SOURCE = HELLO / "hello_service.py"
CHOREO = str(Path(sys.executable).parent / "choreo")


def readme_blocks(language: str) -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def test_the_readme_shows_the_hello_service_byte_for_byte() -> None:
    source = SOURCE.read_text(encoding="utf-8")
    assert source in readme_blocks("python"), "README.md's hello block differs from " + str(
        SOURCE.relative_to(REPO)
    )
    assert len(source.splitlines()) <= 40  # "about 30 lines"


def test_the_readme_runs_it_the_way_this_test_does() -> None:
    commands = "\n".join(readme_blocks("sh"))
    assert "PYTHONPATH=examples/hello" in commands
    assert "choreo serve hello --app hello_service:build" in commands


def test_build_gives_a_service_reacting_to_order_created() -> None:
    sys.path.insert(0, str(HELLO))
    try:
        module: Any = importlib.import_module("hello_service")
    finally:
        sys.path.remove(str(HELLO))
    definition = module.build(RuntimeSettings())
    assert isinstance(definition, ServiceDefinition)
    assert definition.name == "hello"
    assert list(definition.handlers) == [order_events.OrderCreated]


def greetings(database: Path) -> list[tuple[str, str]]:
    if not database.exists():
        return []
    with sqlite3.connect(database) as connection:
        try:
            rows = connection.execute("SELECT order_id, customer FROM greetings").fetchall()
        except sqlite3.OperationalError:  # the service has not created its table yet
            return []
    return [(str(order_id), str(customer)) for order_id, customer in rows]


async def test_the_hello_service_greets_each_order_once(
    broker: EmbeddedBroker, js: Any, tmp_path: Path
) -> None:
    database = tmp_path / "hello.db"
    port = free_port("127.0.0.1")
    spec = ProcessSpec(
        name="hello",
        argv=[CHOREO, "serve", "hello", "--app", "hello_service:build"],
        env={
            "PYTHONPATH": str(HELLO),
            "CHOREO_NATS_URL": broker.url,
            "CHOREO_DATABASE_URL": f"sqlite:///{database}",  # sqlite:/// + /tmp/...: absolute
            "CHOREO_GRPC_HOST": "127.0.0.1",
            "CHOREO_GRPC_PORT": str(port),
        },
        grpc_address=f"127.0.0.1:{port}",
        log_path=tmp_path / "hello.log",
    )
    supervisor = Supervisor([spec])
    await supervisor.start_all(timeout=60)
    try:
        order_id = f"o-{uuid.uuid4().hex[:12]}"
        created = order_events.OrderCreated(order_id=order_id, customer_id="cust-alice")
        first = await publish_event(js, created, aggregate_id=order_id, correlation_id=order_id)
        # The same event again under a new Nats-Msg-Id, past the broker's dedup: the inbox
        # must catch it. Then a second order, so there is something to wait for.
        await publish_event(
            js,
            created,
            aggregate_id=order_id,
            correlation_id=order_id,
            event_id=first.event_id,
            msg_id=f"again-{first.event_id}",
        )
        other = f"o-{uuid.uuid4().hex[:12]}"
        await publish_event(
            js,
            order_events.OrderCreated(order_id=other, customer_id="cust-bob"),
            aggregate_id=other,
            correlation_id=other,
        )

        durable = durable_name("hello", order_events.OrderCreated.DESCRIPTOR.full_name)

        async def all_acked() -> bool:
            info = await js.consumer_info("CHOREO_ORDER", durable)
            return bool(
                info.delivered.stream_seq >= 3
                and info.num_pending == 0
                and info.num_ack_pending == 0
            )

        await wait_for(all_acked, timeout=30, what="hello to ack all three deliveries")
        assert sorted(greetings(database)) == sorted(
            [(order_id, "cust-alice"), (other, "cust-bob")]
        )
    finally:
        codes = supervisor.stop_all()
    assert codes == {"hello": 0}, f"unclean shutdown: {codes}"
    assert "hello, cust-alice" in (tmp_path / "hello.log").read_text()
