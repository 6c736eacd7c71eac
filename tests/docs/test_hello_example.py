"""examples/hello, the README's hello-world service: the README shows its files byte for byte,
its generated code is what its proto generates, its handlers match the reaction its proto
declares, and it runs as the README says (``choreo serve hello --app hello_service:build``) on
a real nats-server, greeting each order once and publishing one ``CustomerGreeted`` for it."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from choreo.broker import EmbeddedBroker, free_port
from choreo.streamread import read_stream
from choreo.subjects import durable_name
from choreo.supervisor import ProcessSpec, Supervisor
from choreo.testing import publish_event, wait_for
from shop.order.v1 import events_pb2 as order_events

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello"
SOURCE = HELLO / "hello_service.py"
PROTO = HELLO / "proto" / "acme" / "hello" / "v1" / "hello.proto"
# What the README puts on PYTHONPATH: the service and its generated code.
PATHS = os.pathsep.join([str(HELLO), str(HELLO / "gen" / "python")])
BIN = Path(sys.executable).parent
CHOREO = str(BIN / "choreo")


def readme_blocks(language: str) -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


@pytest.mark.unit
def test_the_readme_shows_the_hello_service_byte_for_byte() -> None:
    source = SOURCE.read_text(encoding="utf-8")
    assert source in readme_blocks("python"), f"README.md's python block is not {SOURCE}"
    assert PROTO.read_text(encoding="utf-8") in readme_blocks("proto"), (
        f"README.md's proto block is not {PROTO}"
    )
    assert len(source.splitlines()) <= 40  # "about 30 lines"


@pytest.mark.unit
def test_the_readme_runs_it_the_way_this_test_does() -> None:
    commands = "\n".join(readme_blocks("sh"))
    assert "PYTHONPATH=examples/hello:examples/hello/gen/python" in commands
    assert "choreo serve hello --app hello_service:build" in commands


def test_the_generated_code_is_what_the_hello_proto_generates() -> None:
    result = subprocess.run(
        [str(HELLO / "gen.sh"), "--check"],
        env={**os.environ, "PYTHON": sys.executable, "PATH": f"{BIN}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_its_handlers_are_the_reactions_its_proto_declares() -> None:
    # In a process of its own: build() adds acme.hello.v1 to the contracts of the process.
    check = (
        "import hello_service\n"
        "from choreo import contracts\n"
        "from choreo.reactions import check_reactions\n"
        "from choreo.settings import RuntimeSettings\n"
        "definition = hello_service.build(RuntimeSettings())\n"
        "check_reactions(definition.name, definition.handlers)\n"
        "edges = [e for e in contracts.choreography() if e.service == 'hello']\n"
        "print(definition.name, [(e.trigger, e.emits) for e in edges])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check],
        env={**os.environ, "PYTHONPATH": PATHS},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "hello [('shop.order.v1.OrderCreated', ('acme.hello.v1.CustomerGreeted',))]"
    )


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
            "PYTHONPATH": PATHS,
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
            info = await js.consumer_info("SHOP_ORDER", durable)
            return bool(
                info.delivered.stream_seq >= 3
                and info.num_pending == 0
                and info.num_ack_pending == 0
            )

        await wait_for(all_acked, timeout=30, what="hello to ack all three deliveries")
        assert sorted(greetings(database)) == sorted(
            [(order_id, "cust-alice"), (other, "cust-bob")]
        )

        # Its own stream, owned by it (acme.hello -> ACME_HELLO), holds one greeting per order,
        # published by the relay after the commit.
        async def both_published() -> bool:
            try:
                return len(await read_stream(js, "ACME_HELLO")) >= 2
            except Exception:  # the stream is created at start-up; the relay may be behind
                return False

        await wait_for(both_published, timeout=30, what="two CustomerGreeted events")
        published = await read_stream(js, "ACME_HELLO")
        assert sorted(message.subject for message in published) == sorted(
            f"acme.hello.v1.CustomerGreeted.{order}" for order in (order_id, other)
        )
        assert {message.headers["ce-causationid"] for message in published} >= {first.event_id}
    finally:
        codes = supervisor.stop_all()
    assert codes == {"hello": 0}, f"unclean shutdown: {codes}"
    log = (tmp_path / "hello.log").read_text()
    assert "hello, cust-alice" in log
    assert "no contract declares its reactions" not in log
