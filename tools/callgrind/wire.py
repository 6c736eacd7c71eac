"""A nats-py client connected to memory: the real client code up to the socket, no broker.

nats-py's own tasks run as in a service: its flusher writes what publishes and acks queue up,
its read loop parses what the "server" sends. The transport in between is a buffer:
``writelines`` is where bytes would go to the socket (they are counted and dropped), and
``read`` hands the client what :meth:`MemoryTransport.feed` queued (deliveries of a durable
consumer) and the JetStream acks of what the client published with a reply inbox, so the
relay's publish window and ``js.publish`` settle as they would against a server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from nats.aio.client import Client


class MemoryTransport:
    """What nats-py writes and reads, in memory; answers JetStream publishes with a PubAck."""

    def __init__(self, stream: str = "BENCH") -> None:
        self.client: Client | None = None
        self.bytes_written = 0
        self.commands = 0
        self._stream = stream.encode()
        self._seq = 0
        self._inbound: asyncio.Queue[bytes] = asyncio.Queue()
        # The first command written of each kind (PUB, HPUB, SUB, ...), to replay its cost.
        self.samples: dict[bytes, bytes] = {}

    # --- what nats-py calls -------------------------------------------------------------

    def writelines(self, commands: Iterable[bytes]) -> None:
        """The socket write: counted, then answered where a JetStream publish expects it."""
        answers = bytearray()
        for command in commands:
            self.commands += 1
            self.bytes_written += len(command)
            if len(self.samples) < 8:
                self.samples.setdefault(command[:4], bytes(command))
            answers += self.answer(command)
        if answers:
            self._inbound.put_nowait(bytes(answers))

    def write(self, data: bytes) -> None:
        self.writelines((data,))

    async def drain(self) -> None:
        return None

    async def read(self, buffer_size: int) -> bytes:
        return await self._inbound.get()

    def at_eof(self) -> bool:
        return False

    def close(self) -> None:
        return None

    async def wait_closed(self) -> None:
        return None

    def __bool__(self) -> bool:
        return True

    # --- the server's side --------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from the server (deliveries), read by the client's read loop."""
        self._inbound.put_nowait(data)

    def discard_inbound(self) -> None:
        """Drop what waits to be read (the answers of a replay)."""
        while not self._inbound.empty():
            self._inbound.get_nowait()

    def answer(self, command: bytes) -> bytes:
        """The PubAck of a publish with a reply inbox on a subscribed wildcard (the relay's
        window, nats-py's request mux); nothing for acks, pull requests and the rest."""
        if not command.startswith((b"HPUB ", b"PUB ")):
            return b""
        line = command[: command.index(b"\r\n")].split(b" ")
        has_headers = line[0] == b"HPUB"
        if len(line) != (5 if has_headers else 4) or line[1].startswith(b"$JS.API."):
            return b""
        reply = line[2]
        sid = self._wildcard_sid(reply)
        if sid is None:
            return b""
        self._seq += 1
        payload = b'{"stream":"%s","seq":%d}' % (self._stream, self._seq)
        return b"MSG %s %d %d\r\n%s\r\n" % (reply, sid, len(payload), payload)

    def _wildcard_sid(self, reply: bytes) -> int | None:
        assert self.client is not None
        text = reply.decode()
        for sid, sub in self.client._subs.items():
            subject = sub._subject
            if subject.endswith(".*") and text.startswith(subject[:-1]):
                return int(sid)
        return None


def hmsg(subject: str, sid: int, reply: str, headers: dict[str, str], body: bytes) -> bytes:
    """One delivery as the server writes it (``HMSG``)."""
    block = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    head = block.encode()
    return b"HMSG %s %d %s %d %d\r\n%s%s\r\n" % (
        subject.encode(),
        sid,
        reply.encode(),
        len(head),
        len(head) + len(body),
        head,
        body,
    )


def ack_subject(stream: str, durable: str, delivered: int, stream_seq: int, pending: int) -> str:
    """The reply subject of a JetStream delivery (what ``Msg.metadata`` parses)."""
    return f"$JS.ACK.{stream}.{durable}.{delivered}.{stream_seq}.{stream_seq}.0.{pending}"


async def connected_client(
    transport: MemoryTransport, client_class: type[Client] = Client
) -> tuple[Client, list[asyncio.Task[Any]]]:
    """A nats-py client (``client_class``: the runtime's own, or nats-py's for FastStream) in
    its CONNECTED state on ``transport``, with its flusher and read loop running; cancel the
    returned tasks when done."""
    nc = client_class()
    transport.client = nc
    nc._transport = transport  # type: ignore[assignment]
    nc._status = Client.CONNECTED
    nc._server_info = {"max_payload": 1024 * 1024, "headers": True, "jetstream": True}
    nc._max_payload = 1024 * 1024
    nc._max_pending_size = 2 * 1024 * 1024  # choreo's connect_nats default
    nc._flush_queue = asyncio.Queue(maxsize=1024)
    nc._flusher_task = asyncio.create_task(nc._flusher())
    nc._reading_task = asyncio.create_task(nc._read_loop())
    return nc, [nc._flusher_task, nc._reading_task]


async def disconnect(nc: Client, tasks: list[asyncio.Task[Any]]) -> None:
    """Stop the client's tasks and its subscriptions' callback tasks."""
    for sub in nc._subs.values():
        if sub._wait_for_msgs_task is not None:
            tasks.append(sub._wait_for_msgs_task)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
