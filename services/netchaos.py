"""``choreo chaos --network``: faults of the network between each service and its broker.

Each service reaches the broker through a :class:`FaultProxy` of its own, a small asyncio TCP
proxy in this process, which the run tells to:

- **blackhole** a direction (or both): stop forwarding without closing anything, as an
  iptables DROP does: what is sent stays in the sender's socket buffers, TCP backpressure
  builds, new connections are accepted but not forwarded (the client's connect times out
  waiting for the broker's INFO);
- **drop** a direction: read and discard, so the sender sees its bytes taken (a link that
  loses what it acknowledged); a connection that lost bytes is reset when the drop ends, since
  its byte stream is broken;
- **reset** every connection (RST), and refuse new ones with a reset while the fault lasts.

While mixed orders flow (the workload of ``choreo chaos``), a seeded schedule injects: a
service cut from its broker (both directions blackholed; the order service, the busiest
publisher, is always among them), a silent connection (the broker's side goes quiet, the
service's still gets through), a dropped link, connections reset, a flapping link, and a
partition of the order service longer than the saga deadline. Then the checks of
``choreo chaos`` (every saga ends, invariants 1-6, the dead letters, the saga time bound), and
per fault: the time from its end to the service being SERVING again (its gRPC health, which is
NOT_SERVING while its broker connection is down) and to the first saga completed after it.
The run reuses :class:`services.chaos.Chaos` for all of it; only the faults are new.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

UP = "to_broker"  # service -> broker
DOWN = "to_service"  # broker -> service
DIRECTIONS = (UP, DOWN)
CHUNK = 64 * 1024


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    """One proxied connection: the service's side and the broker's."""

    number: int
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    lost_bytes: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self, reset: bool = False) -> None:
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if reset:
                _reset(writer)
            else:
                writer.close()
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()


class FaultProxy:
    """A TCP proxy on loopback that forwards to ``upstream`` until told otherwise."""

    def __init__(
        self,
        upstream: Callable[[], tuple[str, int]],
        *,
        name: str = "",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self._upstream = upstream
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._numbers = itertools.count(1)
        # Set while a direction forwards; cleared while it is blackholed.
        self._flowing = {direction: asyncio.Event() for direction in DIRECTIONS}
        for event in self._flowing.values():
            event.set()
        self._dropping = dict.fromkeys(DIRECTIONS, False)
        self._refusing = False
        self.accepted = 0

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close()
        self._links.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    # --- faults ---------------------------------------------------------------------------

    def blackhole(self, *directions: str) -> None:
        """Stop forwarding (both directions unless named), holding every connection open."""
        for direction in directions or DIRECTIONS:
            self._flowing[direction].clear()

    def drop(self, *directions: str) -> None:
        """Read and discard (both directions unless named)."""
        for direction in directions or DIRECTIONS:
            self._dropping[direction] = True

    def reset(self, refuse: bool = True) -> None:
        """Reset every connection now; with ``refuse``, reset new ones until :meth:`heal`."""
        self._refusing = refuse
        for link in list(self._links):
            link.close(reset=True)
        self._links.clear()

    def heal(self) -> None:
        self._refusing = False
        self._dropping = dict.fromkeys(DIRECTIONS, False)
        for link in list(self._links):
            if link.lost_bytes:  # its byte stream has a hole: nothing can resume on it
                link.close(reset=True)
                self._links.discard(link)
        for event in self._flowing.values():
            event.set()

    @property
    def faulty(self) -> bool:
        return (
            self._refusing
            or any(self._dropping.values())
            or not all(event.is_set() for event in self._flowing.values())
        )

    # --- forwarding -----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refusing:
            _reset(writer)
            return
        link = _Link(next(self._numbers), writer)
        self._links.add(link)
        try:
            # A blackholed link answers no SYN: nothing reaches the broker until it heals.
            await self._flowing[UP].wait()
            await self._flowing[DOWN].wait()
            if link not in self._links:  # reset while it waited
                return
            host, port = self._upstream()
            up_reader, link.upstream = await asyncio.open_connection(host, port)
        except (OSError, asyncio.CancelledError):
            link.close(reset=True)
            self._links.discard(link)
            return
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, link.upstream, UP)),
            asyncio.create_task(self._pump(link, up_reader, writer, DOWN)),
        ]

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        flowing = self._flowing[direction]
        try:
            while True:
                await flowing.wait()  # blackholed: read nothing, so backpressure builds
                data = await reader.read(CHUNK)
                if not data:
                    break
                if self._dropping[direction]:
                    link.lost_bytes = True
                    continue
                await flowing.wait()  # what was read as the blackhole began is held
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return
        link.close()
        self._links.discard(link)
